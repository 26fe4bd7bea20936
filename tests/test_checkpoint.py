"""Checkpoints: round trip, fp16, atomic writes, clear errors; and the predict/evaluate CLI on a saved model."""

import json
from pathlib import Path

import pytest
import torch

from rtmdet_lesson.__main__ import main as cli
from rtmdet_lesson.checkpoint import load_checkpoint, load_checkpoint_model, save_checkpoint
from rtmdet_lesson.data.sprites import SPRITE_CLASSES, generate_sprites
from rtmdet_lesson.presets import build_model

NAMES = list(SPRITE_CLASSES)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("course-sprites", class_names=NAMES).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def test_round_trip_gives_the_same_outputs(model, x, tmp_path):
    path = save_checkpoint(tmp_path / "m.pth", model, epoch=3)
    loaded = load_checkpoint_model(path)
    assert not loaded.training and loaded.class_names == NAMES and loaded.preset == "course-sprites"
    assert load_checkpoint(path)["epoch"] == 3
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for p, q in zip(a.cls_scores + a.kernel_preds + [a.mask_feats], b.cls_scores + b.kernel_preds + [b.mask_feats],
                    strict=True):
        assert torch.equal(p, q)


def test_overrides_come_back(x, tmp_path):
    torch.manual_seed(1)
    fixed = build_model("course-sprites", num_classes=2, separate_reg_tower=True).eval()
    fixed.input_size = 256  # as training sets it
    loaded = load_checkpoint_model(save_checkpoint(tmp_path / "f.pth", fixed, ["a", "b"]))
    assert loaded.num_classes == 2 and loaded.head.reg_tower is not None and loaded.class_names == ["a", "b"]
    assert loaded.input_size == 256
    with torch.no_grad():
        assert torch.equal(fixed(x).bbox_preds[0], loaded(x).bbox_preds[0])


def test_half_precision_file_loads_as_fp32(model, x, tmp_path):
    full, half = tmp_path / "full.pth", tmp_path / "half.pth"
    save_checkpoint(full, model)
    save_checkpoint(half, model, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_checkpoint_model(half)
    assert next(loaded.parameters()).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).cls_scores[0], model(x).cls_scores[0], atol=2e-3, rtol=1e-2)


def test_a_failed_save_leaves_no_partial_file(model, tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, epoch=1)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, epoch=2)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "new.pth", model)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]  # no temporary file, no new.pth


def test_clear_errors_for_missing_and_foreign_files(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint_model(tmp_path / "nope.pth")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a checkpoint written by rtmdet_lesson"):
        load_checkpoint(text)
    mmdet = tmp_path / "mmdet.pth"
    torch.save({"meta": {"epoch": 300}, "state_dict": model.state_dict()}, mmdet)
    with pytest.raises(ValueError, match="load_mmdet_checkpoint"):
        load_checkpoint(mmdet)
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    with pytest.raises(ValueError, match="bare state_dict"):
        load_checkpoint(bare)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny sprites dataset and a randomly initialised course model saved as a checkpoint."""
    root = tmp_path_factory.mktemp("cli")
    generate_sprites(root / "sprites", seed=0, n_train=0, n_val=2)
    torch.manual_seed(0)
    model = build_model("course-sprites", class_names=NAMES)
    with torch.no_grad():
        for rtm_cls in model.head.rtm_cls:
            rtm_cls.bias.fill_(-2.9)  # sigmoid 0.052: every prior passes the "eval" score threshold (0.05)
    ckpt = save_checkpoint(root / "model.pth", model, label_to_category_id={k: k + 1 for k in range(5)})
    return root, ckpt


def test_cli_predict_writes_pictures_and_coco_json(saved, capsys):
    root, ckpt = saved
    images = sorted(str(p) for p in (root / "sprites" / "val" / "images").glob("*.png"))
    out = root / "predictions"
    assert cli(["predict", *images, "--checkpoint", str(ckpt), "--out", str(out), "--config", "deploy",
                "--score-thr", "0.0", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000001.pred.png", "000002.pred.png", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert len(results) > 0 and {r["image_id"] for r in results} <= {1, 2}
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4, 5}
    assert "results.json" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["data", "images"])
def test_cli_evaluate_json_is_the_last_line(saved, capsys, source):
    root, ckpt = saved
    val = root / "sprites" / "val"
    where = ["--data", str(root / "sprites")] if source == "data" else [
        "--images", str(val / "images"), "--annotations", str(val / "annotations.json")]
    assert cli(["evaluate", "--checkpoint", str(ckpt), *where, "--json", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads(lines[-1])
    assert 0 <= metrics["bbox_AP"] <= 1 and 0 <= metrics["segm_AP"] <= 1
    assert any(line.startswith("AP50") for line in lines)  # the readable table came first


def test_cli_errors_are_one_line_messages(saved, tmp_path, capsys):
    root, ckpt = saved
    for argv, expected in [
        (["evaluate", "--checkpoint", str(tmp_path / "nope.pth"), "--data", str(root / "sprites")], "does not exist"),
        (["evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path)], "no 'val' split"),
        (["evaluate", "--checkpoint", str(ckpt), "--images", str(tmp_path)], "--annotations"),
        (["predict", str(tmp_path / "missing.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")],
         "does not exist"),
    ]:
        assert cli(argv) in (1, 2)
        err = capsys.readouterr().err.strip().splitlines()
        assert expected in err[-1] and "Traceback" not in "".join(err), (argv, err)
