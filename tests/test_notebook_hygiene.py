"""Every committed notebook comes from a clean top-to-bottom run, so that nbval compares every cell.

nbval silently skips cells that were never executed, and a kernelspec other than python3 breaks
``--nbval-current-env`` on other machines (nbval's documentation).
"""

import json

import pytest
from conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_run_top_to_bottom(path):
    cells = json.loads(path.read_text())["cells"]
    counts = [cell.get("execution_count") for cell in cells if cell["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts are {counts}; re-run it top to bottom "
        "(jupyter nbconvert --to notebook --execute --inplace) before committing"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_python3(path):
    kernelspec = json.loads(path.read_text())["metadata"].get("kernelspec", {})
    assert kernelspec.get("name") == "python3", f"{path.name}: kernelspec is {kernelspec!r}, not python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_figure_reprs_or_errors_in_outputs(path):
    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"{path.name} cell {index} stored an error"
            # A shown figure stores a "<Figure ...>" text fallback next to its PNG; that is fine. A cell that
            # *returns* a figure (an execute_result) prints the repr for the reader: end it with plt.show().
            if output.get("output_type") == "execute_result":
                text = "".join(output.get("data", {}).get("text/plain", []))
                assert not text.startswith("<Figure size"), f"{path.name} cell {index} returns a Figure repr"
