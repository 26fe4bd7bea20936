"""The exercise notebooks: generated from the chapters, in sync, and each unfilled exercise fails its check
with the "not written yet" message (the solutions, the chapters themselves, pass under nbval)."""

import importlib.util
import json
import os

import pytest
from conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("make_exercises", REPO_ROOT / "tools" / "make_exercises.py")
make_exercises = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_exercises)

CHAPTERS_WITH_EXERCISES = [f"{n:02d}" for n in range(1, 9)]
EXERCISES = sorted((REPO_ROOT / "exercises").glob("*.ipynb"))


def test_skeleton_replaces_each_region_at_its_indentation():
    source = "def f(x):\n    y = x + 1\n    ### BEGIN SOLUTION\n    return y * 2\n    ### END SOLUTION\n"
    text, count = make_exercises.skeleton(source, "cell")
    assert count == 1
    assert text == "def f(x):\n    y = x + 1\n    # YOUR CODE HERE\n    raise NotImplementedError\n"


@pytest.mark.parametrize("source, problem", [
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "inside a function body"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "without ### END SOLUTION"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "without ### BEGIN SOLUTION"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n", "inside another region"),
])
def test_misplaced_markers_are_named(source, problem):
    with pytest.raises(make_exercises.MarkerError, match=problem):
        make_exercises.skeleton(source, "cell")


def test_exercise_notebooks_are_in_sync_with_the_chapters():
    wanted = make_exercises.build()
    assert sorted(wanted) == EXERCISES, "run python tools/make_exercises.py"
    for path, (text, _) in wanted.items():
        assert path.read_text() == text, f"{path.name} is out of date: run python tools/make_exercises.py"


def test_every_chapter_01_to_08_has_at_least_three_exercises():
    counts = {path.name[:2]: count for path, (_, count) in make_exercises.build().items()}
    for chapter in CHAPTERS_WITH_EXERCISES:
        assert counts.get(chapter, 0) >= 3, f"chapter {chapter} has {counts.get(chapter, 0)} exercises"


def _region_cells(path) -> list[int]:
    cells = json.loads(path.read_text())["cells"]
    return [i for i, cell in enumerate(cells)
            if cell["cell_type"] == "code" and "raise NotImplementedError" in "".join(cell["source"])]


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_each_unfilled_exercise_fails_its_check_with_its_message(path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    os.environ.setdefault("RTMDET_LESSON_FAST", "1")
    nbclient.NotebookClient(notebook, timeout=300, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    regions = _region_cells(path)
    for start, stop in zip(regions, regions[1:] + [len(notebook.cells)], strict=True):
        errors = [(i, out) for i in range(start, stop) for out in notebook.cells[i].get("outputs", [])
                  if out.get("output_type") == "error"]
        assert errors, f"{path.name}: the exercise in cell {start} is never checked (no cell after it fails)"
        index, error = errors[0]
        assert error["ename"] == "CheckFailed" and "not written yet" in error["evalue"], (
            f"{path.name}: the exercise in cell {start} first fails in cell {index} with "
            f"{error['ename']}: {error['evalue']}, not with the check's 'not written yet'")
