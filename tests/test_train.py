"""The training loop (chapter 07): it learns, resumes exactly, runs under torchrun, skips bad steps, never
leaves half a checkpoint, and its command line maps onto TrainConfig."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rtmdet_lesson import criterion, train_log
from rtmdet_lesson.checkpoint import load_checkpoint, load_checkpoint_model
from rtmdet_lesson.cli import build_parser, config_from_args, setting_docs
from rtmdet_lesson.cli import main as cli
from rtmdet_lesson.fast import low_precision_dtype
from rtmdet_lesson.train import TrainConfig, scaled_lr, train


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    """A run of a few seconds: 64x64 canvas, 2 iterations per epoch, no workers (deterministic on a CPU)."""
    settings = dict(data=str(data), out=str(out), image_size=64, epochs=2, batch_size=4, workers=0, lr=0.002,
                    warmup_iters=1, mosaic=False, mixup=False, stage2_epochs=1, eval_interval=100, progress=False)
    return TrainConfig(**{**settings, **overrides})


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def steps(out: Path) -> list[dict]:
    return [r for r in read_log(out) if "event" not in r]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------------------------
# (a) it learns


def test_short_run_learns_eight_images(sprites, tmp_path):
    """Letterboxed 128x128 canvases, no random augmentation: every loss falls and the boxes come out right."""
    images, annotations = sprites / "train" / "images", sprites / "train" / "annotations.json"
    config = TrainConfig(
        data=None, train_images=str(images), train_annotations=str(annotations), val_images=str(images),
        val_annotations=str(annotations), out=str(tmp_path / "run"), image_size=128, epochs=150, batch_size=8,
        lr=0.005, warmup_iters=5, augment="none", stage2_epochs=0, eval_interval=1000, save_interval=1000,
        workers=0, progress=False,
    )
    summary = train(config)
    rows = steps(tmp_path / "run")
    assert len(rows) == 150 and summary["skipped_steps"] == 0
    for key in ("loss_cls", "loss_bbox", "loss_mask"):
        first = sum(r[key] for r in rows[:5]) / 5
        last = sum(r[key] for r in rows[-5:]) / 5
        assert last < 0.5 * first, (key, first, last)
    assert rows[0]["num_pos"] > 0
    assert summary["metrics"]["bbox_AP"] > 0.5, summary["metrics"]
    assert summary["train_model"].head.single_cls_pass  # the default: one cls-tower pass (chapter 09)
    # the one evaluation (after the last epoch) is timed in its log record and in the summary
    evals = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r.get("event") == "eval"]
    assert [r["epoch"] for r in evals] == [150]
    assert evals[0]["seconds"] == pytest.approx(summary["eval_seconds"])
    assert 0 < summary["eval_seconds"] < summary["seconds"]

    # the exported checkpoint: fp16 EMA weights that load back with D's loader and give the same AP
    exported = load_checkpoint(summary["final"])
    assert all(v.dtype == torch.float16 for v in exported["model"].values() if v.is_floating_point())
    assert "train_state" not in exported
    model = load_checkpoint_model(summary["final"])
    assert model.class_names == ["portrait", "character", "slime", "chest", "coin"]
    ema = summary["model"].state_dict()
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, ema[key].half().float(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# (b) interrupt + resume == uninterrupted


def test_resume_mid_epoch_gives_the_uninterrupted_weights(sprites, tmp_path):
    """Stopped after 3 of 4 iterations (in the middle of epoch 1, after the stage switch), then resumed."""
    full = train(tiny_config(sprites, tmp_path / "full", augment="reference"))
    part = tiny_config(sprites, tmp_path / "part", augment="reference")
    stopped = train(part, max_iters=3)
    assert stopped["stopped"] and stopped["iterations"] == 3
    state = load_checkpoint(tmp_path / "part" / "last.pth")["train_state"]
    assert (state["epoch"], state["epoch_iter"], state["iteration"]) == (1, 1, 3)
    resumed = train(part, resume=tmp_path / "part" / "last.pth")
    assert resumed["iterations"] == full["iterations"] == 4

    a = load_checkpoint(tmp_path / "full" / "last.pth")["train_state"]
    b = load_checkpoint(tmp_path / "part" / "last.pth")["train_state"]
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["ema"]["module"], b["ema"]["module"])
    assert a["ema"]["steps"] == b["ema"]["steps"] == 4
    assert a["scheduler"] == b["scheduler"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert_same_state(sa, sb)
    # the log of the resumed run continues the interrupted one, step for step
    assert [r["loss"] for r in steps(tmp_path / "part")] == [r["loss"] for r in steps(tmp_path / "full")]


# ---------------------------------------------------------------------------------------------------------------
# (c) torchrun, 2 processes on gloo

DDP_SCRIPT = """
import hashlib, logging, os, sys
from rtmdet_lesson.train import TrainConfig, train

logging.basicConfig(level=logging.INFO)
data, out = sys.argv[1], sys.argv[2]
# an evaluation after epoch 1 improves the best AP on rank 0 alone, while --save-interval 2 writes no last.pth then:
# every rank must still join rank 0's save of best.pth (its gather of the RNG states), or the run hangs
summary = train(TrainConfig(data=data, out=out, image_size=64, epochs=2, batch_size=2, workers=0, warmup_iters=1,
                            mosaic=False, mixup=False, stage2_epochs=1, eval_interval=1, save_interval=2,
                            progress=False))
digest = hashlib.sha256()
for model in (summary["train_model"], summary["model"]):
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
with open(os.path.join(out, f"rank{os.environ['RANK']}.sha256"), "w") as f:
    f.write(digest.hexdigest())
"""


def test_torchrun_two_processes_end_identical(sprites, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(sprites), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    hashes = [(out / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1]
    assert "no SyncBatchNorm on gloo" in result.stderr
    rows = steps(out)  # rank 0 alone writes the log: 8 images / (2 ranks x 2) = 2 iterations per epoch
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert sorted(p.name for p in out.glob("*.pth")) == ["best.pth", "final.pth", "last.pth"]


# ---------------------------------------------------------------------------------------------------------------
# (d) a non-finite loss skips the step and says so


def test_non_finite_loss_skips_the_step(sprites, tmp_path, monkeypatch, caplog, built_models):
    real, calls = criterion.compute_losses, []

    def nan_on_second_call(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        return losses

    monkeypatch.setattr(criterion, "compute_losses", nan_on_second_call)
    seen = []

    def remember(record):
        seen.append({k: v.detach().clone() for k, v in built_models[0].named_parameters()})

    with caplog.at_level(logging.WARNING, logger="rtmdet_lesson.train"):
        summary = train(tiny_config(sprites, tmp_path / "run", epochs=1, augment="none"), on_step=remember)
    assert summary["skipped_steps"] == 1
    assert any("not finite" in r.message and "skipped" in r.message for r in caplog.records)
    events = [r for r in read_log(tmp_path / "run") if r.get("event") == "skipped_step"]
    assert len(events) == 1 and events[0]["iteration"] == 1 and math.isnan(events[0]["loss_bbox"])
    # the skipped step (the second) leaves the weights as the first step left them
    assert_same_state(seen[0], seen[1])
    assert load_checkpoint(tmp_path / "run" / "last.pth")["train_state"]["ema"]["steps"] == 1
    assert all(torch.isfinite(v).all() for v in summary["train_model"].state_dict().values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------------------------------
# (e) checkpoints are atomic


def test_failed_checkpoint_write_keeps_the_previous_file(sprites, tmp_path, monkeypatch):
    config = tiny_config(sprites, tmp_path / "run", augment="none")
    train(config, max_iters=1)
    last = tmp_path / "run" / "last.pth"
    before = last.read_bytes()

    def torch_save_that_dies(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torch_save_that_dies)
    with pytest.raises(OSError, match="disk full"):
        train(config, resume=last, max_iters=2)
    assert last.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pth", "log.jsonl"]
    monkeypatch.undo()
    assert load_checkpoint(last)["train_state"]["iteration"] == 1


# ---------------------------------------------------------------------------------------------------------------
# settings, errors and the command line


def test_zero_positives_with_objects_stops_with_the_fix(sprites, tmp_path, monkeypatch):
    real = criterion.compute_losses

    def no_positives(*args, **kwargs):
        return {**real(*args, **kwargs), "num_pos": 0}

    monkeypatch.setattr(criterion, "compute_losses", no_positives)
    monkeypatch.setattr(train_log, "ZERO_POSITIVE_PATIENCE", 2)
    with pytest.raises(RuntimeError, match="no positive priors.*category-id"):
        train(tiny_config(sprites, tmp_path / "run", augment="none"))


def test_missing_dataset_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m rtmdet_lesson data sprites"):
        train(tiny_config(tmp_path / "nothing", tmp_path / "run"))


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(image_size=300).resolve()
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig(preset="rtmdet-huge").resolve()
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8").resolve()


def test_resolved_defaults_follow_the_recipe():
    reference = TrainConfig(preset="rtmdet-ins-tiny").resolve(world_size=8)
    assert (reference.image_size, reference.epochs, reference.batch_size) == (640, 300, 32)  # 8 x 32, 300 epochs
    assert (reference.lr, reference.weight_decay, reference.stage2_epochs) == (pytest.approx(0.004), 0.05, 20)
    assert TrainConfig.for_preset("rtmdet-ins-tiny") == TrainConfig(preset="rtmdet-ins-tiny")
    course = TrainConfig.for_preset("course-sprites").resolve()
    assert (course.image_size, course.epochs, course.batch_size, course.lr) == (320, 20, 8, 0.002)
    assert TrainConfig(batch_size=16).resolve().lr == pytest.approx(0.001)  # 0.004 * sqrt(16 / 256)
    assert TrainConfig(epochs=30).resolve().stage2_epochs == 2
    assert scaled_lr(64) == pytest.approx(0.002)


def train_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_command_line_flags_and_set_reach_every_setting():
    args = train_args("rtmdet-ins-tiny", "--images", "imgs", "--annotations", "a.json", "--epochs", "3",
                      "--batch-size", "2", "--lr", "0.01", "--set", "image_size=256", "--set", "mosaic=false",
                      "--amp", "bf16", "--workers", "0", "--seed", "7", "--augment", "flip", "--set", "export-half=no",
                      "--set", "single_cls_pass=0", "--set", "val_images=v", "--set", "val_annotations=none")
    config = config_from_args(args)
    assert (config.preset, config.data, config.train_images, config.train_annotations) == (
        "rtmdet-ins-tiny", None, "imgs", "a.json")
    assert (config.val_images, config.val_annotations) == ("v", None)
    assert (config.epochs, config.batch_size, config.lr, config.image_size) == (3, 2, 0.01, 256)
    assert (config.mosaic, config.mixup, config.amp, config.workers, config.seed) == (False, True, "bf16", 0, 7)
    assert (config.augment, config.export_half, config.out) == ("flip", False, "runs/rtmdet-ins-tiny")
    assert not config.single_cls_pass
    assert config_from_args(train_args()) == TrainConfig.for_preset("course-sprites", out="runs/course-sprites")
    assert config_from_args(train_args("--set", "stage2_epochs=none", "--set", "lr=1e-3")).stage2_epochs is None
    assert set(setting_docs()) == set(TrainConfig.__dataclass_fields__)  # every setting is documented, once
    with pytest.raises(ValueError, match="either --data"):
        config_from_args(train_args("--data", "d", "--images", "i", "--annotations", "a"))
    with pytest.raises(ValueError, match="unknown setting 'cache_images'"):
        config_from_args(train_args("--set", "cache_images=on"))


def test_train_help_fits_on_a_screen(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert len(capsys.readouterr().out.splitlines()) <= 60


def test_presets_train_with_their_recipe_and_flags_win():
    """Flags given on the command line override the preset's recipe; the 640 presets keep the reference's."""
    course = config_from_args(train_args("course-sprites", "--epochs", "3", "--set", "mosaic=true"))
    assert (course.epochs, course.batch_size, course.mosaic, course.mixup) == (3, 8, True, False)
    official = config_from_args(train_args("rtmdet-ins-s"))
    assert official == TrainConfig(preset="rtmdet-ins-s", out="runs/rtmdet-ins-s")
    rotated = config_from_args(train_args("rtmdet-r-tiny")).resolve()  # mmrotate: 36 epochs of 8 at 0.004 / 16
    assert (rotated.epochs, rotated.batch_size, rotated.lr, rotated.image_size) == (36, 8, 0.00025, 1024)


def test_a_run_shorter_than_the_recipe_keeps_a_valid_stage_2():
    """course-sprites' recipe ends with 2 stage-2 epochs: --epochs 1 makes the one epoch stage 2, not an error."""
    assert config_from_args(train_args("course-sprites", "--epochs", "1")).resolve().stage2_epochs == 1
    assert config_from_args(train_args("course-sprites", "--epochs", "5")).resolve().stage2_epochs == 2
    with pytest.raises(ValueError, match="stage2_epochs 3 must lie between 0 and epochs"):
        config_from_args(train_args("course-sprites", "--epochs", "1", "--set", "stage2_epochs=3")).resolve()


def test_fast_sets_its_settings_under_the_ones_given():
    fast = config_from_args(train_args("--fast"))
    assert fast.channels_last
    assert fast.amp == ("bf16" if low_precision_dtype(torch.device("cpu")) else "off")
    mine = config_from_args(train_args("--fast", "--amp", "off", "--set", "channels_last=false"))
    assert (mine.amp, mine.channels_last) == ("off", False)  # what was given wins


def test_cli_trains_then_resumes_with_the_saved_settings(sprites, tmp_path, caplog):
    out = tmp_path / "run"
    first = ["train", "--data", str(sprites), "--out", str(out), "--set", "image_size=64", "--epochs", "2",
             "--batch-size", "4", "--workers", "0", "--augment", "none", "--set", "stage2_epochs=0", "--max-iters", "1",
             "--set", "progress=false"]
    assert cli(first) == 0
    assert len(steps(out)) == 1
    # a checkpoint written before the decoded-image cache was removed has cache_images in its config: ignored
    last = load_checkpoint(out / "last.pth")
    last["train_state"]["config"]["cache_images"] = "on"
    torch.save(last, out / "last.pth")
    # only --resume: the data, canvas, epochs... come from the checkpoint
    with caplog.at_level(logging.INFO, logger="rtmdet_lesson.train"):
        assert cli(["train", "--resume", str(out / "last.pth"), "--set", "progress=false"]) == 0
    assert "resumed from" in caplog.text and "cache" not in caplog.text and "differ" not in caplog.text
    assert [r["iteration"] for r in steps(out)] == [1, 2, 3, 4]
    assert load_checkpoint_model(out / "final.pth").preset == "course-sprites"
    assert load_checkpoint(out / "last.pth")["train_state"]["config"]["image_size"] == 64
    assert "cache_images" not in load_checkpoint(out / "last.pth")["train_state"]["config"]


def test_ctrl_c_finishes_the_step_and_writes_last(sprites, tmp_path):
    import signal

    def interrupt(record):
        if record["iteration"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    summary = train(tiny_config(sprites, tmp_path / "run", augment="none"), on_step=interrupt)
    assert summary["stopped"] and summary["iterations"] == 2
    state = load_checkpoint(tmp_path / "run" / "last.pth")["train_state"]
    assert (state["epoch"], state["epoch_iter"], state["iteration"]) == (0, 2, 2)  # the epoch's end not yet counted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
