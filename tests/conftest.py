"""Shared pytest set-up: a headless plotting backend and paths to the repository and the shared references."""

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the repository with shared/ beside it; the reference state_dict layouts live there.
SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
