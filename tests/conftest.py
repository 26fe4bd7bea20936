"""Shared pytest set-up: a headless plotting backend, the CPU as the default device, the repository's root.

The unit tests compare against CPU results (bit-identical runs, the CPU's fast path), so they run on the CPU
even on a GPU machine: ``RTMDET_LESSON_DEVICE=cpu`` is the default device of every ``pick_device()`` call,
subprocesses included. ``tests/test_gpu.py`` names CUDA explicitly and skips without it.
"""

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ["RTMDET_LESSON_DEVICE"] = "cpu"

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
