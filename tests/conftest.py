"""Shared pytest set-up: a headless plotting backend, the CPU as the default device, the repository's root.

The unit tests compare against CPU results (bit-identical runs, the CPU's fast path), so they run on the CPU
even on a GPU machine: ``RTMDET_LESSON_DEVICE=cpu`` is the default device of every ``pick_device()`` call,
subprocesses included. ``tests/test_gpu.py`` names CUDA explicitly and skips without it.
"""

import os
from pathlib import Path

import matplotlib
import pytest

from rtmdet_lesson import train as train_module
from rtmdet_lesson.data.sprites import generate_sprites
from rtmdet_lesson.train import TrainConfig

matplotlib.use("Agg")
os.environ["RTMDET_LESSON_DEVICE"] = "cpu"

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module")
def sprites(tmp_path_factory) -> Path:
    """Eight training and two validation sprite images (about a third of a second to generate)."""
    root = tmp_path_factory.mktemp("sprites")
    generate_sprites(root, seed=0, n_train=8, n_val=2)
    return root


@pytest.fixture
def quick_config():
    """``quick_config(root, out, **overrides)``: a TrainConfig of a few seconds (64x64 canvas, batch 4, no
    workers, letterboxed images without random augmentation) that the overrides change."""

    def make(root: Path, out: Path, **overrides) -> TrainConfig:
        settings = dict(data=str(root), out=str(out), image_size=64, epochs=2, batch_size=4, workers=0, lr=0.002,
                        warmup_iters=1, augment="none", stage2_epochs=0, eval_interval=100, progress=False)
        return TrainConfig(**{**settings, **overrides})

    return make


@pytest.fixture
def built_models(monkeypatch) -> list:
    """The models ``train`` builds, in order, so that a test's ``on_step`` callback can look at them."""
    models = []
    original = train_module.build_model

    def build_and_keep(*args, **kwargs):
        models.append(original(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(train_module, "build_model", build_and_keep)
    return models
