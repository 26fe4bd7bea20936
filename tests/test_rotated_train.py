"""RTMDet-R through the package's command line: train, resume, evaluate and predict on DOTA-format data."""

import json

import numpy as np
import pytest
import torch

from rtmdet_lesson.checkpoint import load_checkpoint, load_checkpoint_model
from rtmdet_lesson.cli import main as cli
from rtmdet_lesson.data.rotated_sprites import generate_rotated_sprites
from rtmdet_lesson.data.sprites import SPRITE_CLASSES, generate_sprites
from rtmdet_lesson.rotated.model import RTMDetR
from rtmdet_lesson.train import TrainConfig, train

SMALL = dict(preset="course-sprites-rotated", image_size=128, epochs=2, batch_size=2, workers=0, progress=False,
             warmup_iters=1, eval_interval=1, stage2_epochs=0)


@pytest.fixture(scope="module")
def rotated_data(tmp_path_factory):
    return generate_rotated_sprites(tmp_path_factory.mktemp("rs") / "data", seed=2, n_train=4, n_val=2)


def test_train_evaluate_and_predict_from_the_command_line(rotated_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["train", "course-sprites-rotated", "--data", str(rotated_data), "--out", str(out), "--epochs", "1",
                "--batch-size", "2", "--set", "image_size=128", "--workers", "0", "--set", "progress=false"]) == 0
    checkpoint = load_checkpoint(out / "final.pth")
    assert checkpoint["preset"] == "course-sprites-rotated" and list(checkpoint["class_names"]) == list(SPRITE_CLASSES)
    assert checkpoint["label_to_category_id"] == {i: i + 1 for i in range(5)}
    model = load_checkpoint_model(out / "final.pth")
    assert isinstance(model, RTMDetR) and model.input_size == 128
    assert set(json.loads((out / "log.jsonl").read_text().splitlines()[-1])) >= {"rbox_mAP50", "rbox_AP"}
    capsys.readouterr()

    assert cli(["evaluate", "--checkpoint", str(out / "final.pth"), "--data", str(rotated_data), "--json"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads(printed[-1])
    assert 0.0 <= metrics["rbox_mAP50"] <= 1.0 and 0.0 <= metrics["rbox_AP"] <= metrics["rbox_mAP50"]
    assert any(line.startswith("mAP50") for line in printed)

    image = rotated_data / "val" / "images" / "000001.png"
    assert cli(["predict", str(image), "--checkpoint", str(out / "final.pth"), "--out", str(tmp_path / "pred"),
                "--score-thr", "0.0"]) == 0
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert (tmp_path / "pred" / "000001.pred.png").is_file()
    assert results and len(results[0]["rbox"]) == 5 and len(results[0]["poly"]) == 8
    assert results[0]["class_name"] in SPRITE_CLASSES and results[0]["category_id"] in range(1, 6)
    capsys.readouterr()

    # the ONNX export knows only the axis-aligned heads: a rotated model is refused in one line, nothing written
    assert cli(["export", "--checkpoint", str(out / "final.pth"), "--out", str(tmp_path / "r.onnx")]) == 2
    assert "RTMDet-R" in capsys.readouterr().err and not (tmp_path / "r.onnx").exists()


def test_resume_is_exact(rotated_data, tmp_path):
    whole = train(TrainConfig(**SMALL, data=str(rotated_data), out=str(tmp_path / "whole")))
    train(TrainConfig(**SMALL, data=str(rotated_data), out=str(tmp_path / "cut")), max_iters=3)
    resumed = train(TrainConfig(**SMALL, data=str(rotated_data), out=str(tmp_path / "cut")),
                    resume=tmp_path / "cut" / "last.pth")
    for (name, a), b in zip(whole["train_model"].state_dict().items(), resumed["train_model"].state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert whole["metrics"] == resumed["metrics"]


def test_one_line_errors_for_the_wrong_data(rotated_data, tmp_path, capsys):
    coco = tmp_path / "coco"
    generate_sprites(coco, n_train=2, n_val=1)
    assert cli(["train", "course-sprites-rotated", "--data", str(coco), "--out", str(tmp_path / "r")]) == 2
    assert "data sprites --rotated" in capsys.readouterr().err


def test_fast_settings_train_a_rotated_preset(rotated_data, tmp_path):
    # train --fast sets channels-last, and bf16 where the CPU has it
    summary = train(TrainConfig(**{**SMALL, "channels_last": True}, data=str(rotated_data),
                                out=str(tmp_path / "fast")), max_iters=1)
    assert summary["iterations"] == 1 and summary["stopped"] and summary["final"] is None


def test_pipeline_samples_feed_the_loss(rotated_data):
    from rtmdet_lesson.data.collate import AugmentedDataset, collate
    from rtmdet_lesson.preprocess import normalize
    from rtmdet_lesson.rotated.dota import dota_split
    from rtmdet_lesson.train import build_pipeline

    config = TrainConfig(**SMALL, data=str(rotated_data)).resolve()
    dataset = AugmentedDataset(dota_split(rotated_data, "train"), build_pipeline(config))
    images, targets = collate([dataset[i] for i in range(2)])
    assert images.shape == (2, 3, 128, 128) and images.dtype == torch.uint8
    model = RTMDetR(num_classes=5, deepen_factor=0.167, widen_factor=0.25, input_size=128)
    losses = model.loss(normalize(images), targets)
    assert np.isfinite(float((losses["loss_cls"] + losses["loss_bbox"]).detach()))
