"""Shared pytest set-up: a headless plotting backend, the CPU as the default device, the repository's root.

The unit tests compare against CPU results (bit-identical runs, the CPU's fast path), so they run on the CPU
even on a GPU machine: ``RTMDET_LESSON_DEVICE=cpu`` is the default device of every ``pick_device()`` call,
subprocesses included. ``tests/test_gpu.py`` names CUDA explicitly and skips without it.
"""

import json
import os
import shlex
from dataclasses import fields
from pathlib import Path

import matplotlib
import pytest

from rtmdet_lesson import train as train_module
from rtmdet_lesson.checkpoint import load_checkpoint_model
from rtmdet_lesson.data.sprites import SPRITE_CLASSES, generate_sprites
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


# ---------------------------------------------------------------------------------------------------------------
# the shipped checkpoints (data/PRESET.pth) and their records (data/PRESET.json): tests/test_shipped_*.py

MACHINE_SETTINGS = ("data", "out", "workers", "amp", "progress", "device")  # where and how fast, not what is learnt


def shipped(preset: str) -> tuple[Path, dict]:
    """The shipped checkpoint of a course preset and the record of how it was trained and what it scored."""
    return REPO_ROOT / "data" / f"{preset}.pth", json.loads((REPO_ROOT / "data" / f"{preset}.json").read_text())


def check_shipped_checkpoint(preset: str):
    """The checkpoint rebuilds the preset it records, with the sprites' classes and canvas; returns the model."""
    checkpoint, record = shipped(preset)
    model = load_checkpoint_model(checkpoint, device="cpu")
    assert model.preset == record["preset"] == preset
    assert model.class_names == list(SPRITE_CLASSES) and model.input_size == record["image_size"]
    return model


def check_recorded_recipe_is_the_presets(preset: str) -> None:
    """``train PRESET`` with no flags trains with the recipe of the recorded command that made the checkpoint
    (all but where and how fast: data, out, workers, amp, progress and device)."""
    from rtmdet_lesson.cli import build_parser, config_from_args

    _, record = shipped(preset)
    words = shlex.split(record["command"])
    recorded = config_from_args(build_parser().parse_args(words[words.index("rtmdet_lesson") + 1:])).resolve()
    default = config_from_args(build_parser().parse_args(["train", preset])).resolve()
    differ = {f.name: (getattr(recorded, f.name), getattr(default, f.name)) for f in fields(TrainConfig)
              if f.name not in MACHINE_SETTINGS and getattr(recorded, f.name) != getattr(default, f.name)}
    assert not differ, f"train {preset} differs from the recorded recipe (recorded, default): {differ}"
