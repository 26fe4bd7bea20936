"""What the package guarantees a user: it never loses their files, resumes bit for bit, survives non-finite steps,
keeps the dataset's category ids, reads unusual images correctly, and answers mistakes with one clear line."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rtmdet_lesson import train as train_module
from rtmdet_lesson.checkpoint import category_ids, load_checkpoint, load_checkpoint_model, save_checkpoint
from rtmdet_lesson.cli import main as cli
from rtmdet_lesson.data.coco import CocoInstanceDataset
from rtmdet_lesson.evaluate import evaluate_results, predict_dataset
from rtmdet_lesson.image_files import pil_to_rgb_array, read_rgb
from rtmdet_lesson.official_weights import load_mmdet_checkpoint
from rtmdet_lesson.predict import predict
from rtmdet_lesson.presets import build_model
from rtmdet_lesson.runtime import pick_device
from rtmdet_lesson.train import TrainConfig, TrainingDiverged, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random course model that finds instances everywhere (so that predictions are written)."""
    torch.manual_seed(0)
    model = build_model("course-sprites", input_size=64)
    with torch.no_grad():
        for rtm_cls in model.head.rtm_cls:
            rtm_cls.bias.fill_(-2.9)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pth", model)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    status = cli(argv)
    return status, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines, err
    return lines[-1]


def all_tensors_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------------------------
# 1-3: a user's files are never overwritten


def test_predict_never_overwrites_an_input_or_another_output(sprites, checkpoint, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    source = sprites / "val" / "images" / "000001.png"
    for folder in (a, b):
        shutil.copy(source, folder / "x.png")
    shutil.copy(source, a / "x.pred.png")  # an input that looks like an output name
    before = {p: p.read_bytes() for p in a.iterdir()}
    argv = ["predict", str(a / "x.png"), str(a / "x.pred.png"), str(b / "x.png"), "--checkpoint", str(checkpoint),
            "--out", str(a), "--score-thr", "0.3", "--device", "cpu"]
    assert cli(argv) == 0
    assert all(p.read_bytes() == data for p, data in before.items())  # every input untouched
    drawings = sorted(p.name for p in a.glob("*.png") if p not in before)
    assert drawings == ["x-2.pred.png", "x-3.pred.png", "x.pred.pred.png"]  # three inputs, three drawings
    # a second run into the same folder refuses, then replaces with --overwrite (and never the inputs)
    status, err = run_cli(argv, capsys)
    assert status == 2 and "--overwrite" in one_line_error(err)
    assert cli([*argv, "--overwrite"]) == 0
    assert all(p.read_bytes() == data for p, data in before.items())


def test_predict_takes_a_folder_and_reports_a_bad_file_after_writing_the_rest(sprites, checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(sprites / "val" / "images", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    status, err = run_cli(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out),
                           "--score-thr", "0.0", "--device", "cpu"], capsys)
    assert status == 1 and "broken.png" in err
    results = json.loads((out / "results.json").read_text())
    assert {Path(r["file_name"]).name for r in results} == {"000001.png", "000002.png"}
    assert sorted(p.name for p in out.glob("*.png")) == ["000001.pred.png", "000002.pred.png"]


def test_a_second_train_into_the_same_folder_is_refused(sprites, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(sprites), "--out", str(out), "--set", "image_size=64", "--epochs", "1",
            "--batch-size", "4", "--workers", "0", "--augment", "none", "--set", "stage2_epochs=0",
            "--set", "progress=false"]
    assert cli(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    status, err = run_cli(argv, capsys)
    message = one_line_error(err)
    assert status == 2 and "--resume" in message and "--overwrite" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert cli([*argv, "--overwrite", "--seed", "1"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log if "event" in r].count("start") == 1  # one run, not two mixed
    assert log[0]["config"]["seed"] == 1


def test_sprites_refuse_a_folder_with_other_files(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "train").mkdir()
    (mine / "train" / "notes.txt").write_text("mine too")
    status, err = run_cli(["data", "sprites", "--out", str(mine), "--train", "2", "--val", "1"], capsys)
    assert status == 2 and "new or empty folder" in one_line_error(err)
    assert (mine / "thesis.tex").read_text() == "years of work" and sorted(p.name for p in mine.iterdir()) == [
        "thesis.tex", "train"]
    # regenerating an existing sprites folder (smaller) is fine: only the generator's own files change
    ours = tmp_path / "sprites"
    assert cli(["data", "sprites", "--out", str(ours), "--train", "3", "--val", "1"]) == 0
    assert cli(["data", "sprites", "--out", str(ours), "--train", "2", "--val", "1"]) == 0
    assert len(list((ours / "train" / "images").iterdir())) == 2
    (ours / "val" / "images" / "holiday.jpg").write_bytes(b"photo")
    status, err = run_cli(["data", "sprites", "--out", str(ours), "--train", "2", "--val", "1"], capsys)
    assert status == 2 and "holiday.jpg" in one_line_error(err)


# ---------------------------------------------------------------------------------------------------------------
# 4: resume is exact


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_with_mosaic_and_mixup_is_bit_exact(sprites, tmp_path, workers, quick_config):
    """Batches of 2 over 8 images: stopped at iteration 3 of epoch 0, with the mosaic cache past its first four
    samples (so mosaic and mixup are both mixing) and resumed; every weight, BN statistic, EMA tensor and
    optimizer state equals the uninterrupted run's."""
    settings = dict(augment="reference", mosaic=True, mixup=True, batch_size=2, workers=workers)
    train(quick_config(sprites, tmp_path / "full", **settings))
    part = quick_config(sprites, tmp_path / "part", **settings)
    assert train(part, max_iters=3)["stopped"]
    assert load_checkpoint(tmp_path / "part" / "last.pth")["train_state"]["epoch_iter"] == 3
    train(part, resume=tmp_path / "part" / "last.pth")
    a = load_checkpoint(tmp_path / "full" / "last.pth")["train_state"]
    b = load_checkpoint(tmp_path / "part" / "last.pth")["train_state"]
    all_tensors_equal(a["model"], b["model"])  # weights and BN running statistics
    all_tensors_equal(a["ema"]["module"], b["ema"]["module"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        all_tensors_equal(sa, sb)


def test_resume_at_an_epoch_boundary_keeps_the_new_epochs_augmentation(sprites, tmp_path, quick_config):
    settings = dict(augment="reference", mosaic=True, mixup=True, batch_size=2, epochs=3)
    train(quick_config(sprites, tmp_path / "full", **settings))
    part = quick_config(sprites, tmp_path / "part", **settings)
    train(part, max_iters=4)  # the end of epoch 0
    train(part, resume=tmp_path / "part" / "last.pth")
    all_tensors_equal(load_checkpoint(tmp_path / "full" / "last.pth")["train_state"]["model"],
                      load_checkpoint(tmp_path / "part" / "last.pth")["train_state"]["model"])


def test_resume_with_another_preset_is_one_line(sprites, tmp_path, quick_config):
    config = quick_config(sprites, tmp_path / "run")
    train(config, max_iters=1)
    other = TrainConfig(**{**config.__dict__, "preset": "course-sprites-det"})
    with pytest.raises(ValueError, match="is a course-sprites run with 5 classes, but this run builds "
                                         "course-sprites-det"):
        train(other, resume=tmp_path / "run" / "last.pth")


# ---------------------------------------------------------------------------------------------------------------
# 5: a non-finite step changes nothing, a diverged run stops, no file holds inf or NaN


def test_a_nan_batch_leaves_bn_statistics_and_ema_untouched(sprites, tmp_path, monkeypatch, quick_config,
                                                           built_models):
    real, calls = train_module.normalize, []

    def nan_second_batch(images):
        calls.append(1)
        x = real(images)
        return x * float("nan") if len(calls) == 2 else x

    monkeypatch.setattr(train_module, "normalize", nan_second_batch)
    states = []
    summary = train(quick_config(sprites, tmp_path / "run", epochs=1),
                    on_step=lambda record: states.append(
                        {k: v.clone() for k, v in built_models[0].state_dict().items()}))
    assert summary["skipped_steps"] == 1
    all_tensors_equal(states[0], states[1])  # weights, BN running statistics and counters as before the NaN batch
    final = load_checkpoint(tmp_path / "run" / "final.pth")["model"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


def test_a_diverging_run_stops_with_a_clear_error(sprites, tmp_path, capsys, quick_config):
    out = tmp_path / "run"
    status, err = run_cli(["train", "--data", str(sprites), "--out", str(out), "--set", "image_size=64",
                           "--epochs", "5", "--batch-size", "2", "--workers", "0", "--augment", "none",
                           "--set", "stage2_epochs=0", "--lr", "1e6", "--set", "warmup_iters=0",
                           "--set", "progress=false"], capsys)
    assert status == 1 and "diverged" in one_line_error(err) and "--lr" in one_line_error(err)
    state = load_checkpoint(out / "last.pth")  # the state before the bad steps, finite (load_checkpoint checks)
    assert state["train_state"]["skipped_steps"] >= train_module.MAX_BAD_STEPS_IN_A_ROW
    assert not (out / "final.pth").exists()
    with pytest.raises(TrainingDiverged):
        train(quick_config(sprites, tmp_path / "api", lr=1e6, warmup_iters=0, epochs=5, batch_size=2))


def test_checkpoints_never_hold_non_finite_values(tmp_path):
    model = build_model("course-sprites")
    with torch.no_grad():
        model.head.rtm_cls[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 tensor.*inf or NaN.*head.rtm_cls.0.weight"):
        save_checkpoint(tmp_path / "nan.pth", model)
    assert not list(tmp_path.iterdir())
    with torch.no_grad():
        model.head.rtm_cls[0].weight[0, 0, 0, 0] = 1e6  # finite in fp32, inf in fp16
    with pytest.warns(UserWarning, match="kept in fp32"):
        save_checkpoint(tmp_path / "big.pth", model, half=True)
    assert load_checkpoint(tmp_path / "big.pth")["model"]["head.rtm_cls.0.weight"].dtype == torch.float32
    # a file written some other way (an older version) is refused on loading, naming the problem
    bad = load_checkpoint(tmp_path / "big.pth")
    bad["model"]["head.rtm_cls.0.weight"][0, 0, 0, 0] = float("inf")
    torch.save(bad, tmp_path / "old.pth")
    with pytest.raises(ValueError, match="inf or NaN"):
        load_checkpoint(tmp_path / "old.pth")


# ---------------------------------------------------------------------------------------------------------------
# 6: the dataset's category ids


def test_predictions_carry_the_datasets_category_ids(sprites, tmp_path, quick_config):
    data = json.loads((sprites / "train" / "annotations.json").read_text())
    ids = {1: 3, 2: 17, 3: 90, 4: 91, 5: 250}  # like COCO's: not 1..C
    for cat in data["categories"]:
        cat["id"] = ids[cat["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = ids[ann["category_id"]]
    annotations = tmp_path / "remapped.json"
    annotations.write_text(json.dumps(data))
    config = quick_config(sprites, tmp_path / "run", data=None, train_images=str(sprites / "train" / "images"),
                  train_annotations=str(annotations), epochs=1)
    summary = train(config)
    for name in ("last.pth", "final.pth"):
        assert category_ids(load_checkpoint(tmp_path / "run" / name)) == {0: 3, 1: 17, 2: 90, 3: 91, 4: 250}
    model = load_checkpoint_model(summary["final"])
    with torch.no_grad():
        for rtm_cls in model.head.rtm_cls:
            rtm_cls.bias.fill_(-1.0)  # finds instances of every class
    save_checkpoint(tmp_path / "busy.pth", model, label_to_category_id=model.label_to_category_id)
    assert cli(["predict", str(sprites / "val" / "images"), "--checkpoint", str(tmp_path / "busy.pth"), "--out",
                str(tmp_path / "pred"), "--device", "cpu", "--score-thr", "0.0"]) == 0
    found = {r["category_id"] for r in json.loads((tmp_path / "pred" / "results.json").read_text())}
    assert found and found <= set(ids.values()) and found - {1, 2, 4, 5}
    # files that predate the map keep the 1..C ids they always had
    assert category_ids({"num_classes": 3}) == {0: 1, 1: 2, 2: 3}


# ---------------------------------------------------------------------------------------------------------------
# 7: unusual image files


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode == "I;16"
    rgb = read_rgb(tmp_path / "depth.png")
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255] and (rgb[..., 0] == rgb[..., 2]).all()
    as_int32 = Image.fromarray(values.astype(np.int32))  # some Pillow versions open 16-bit PNGs as mode I
    assert as_int32.mode == "I" and pil_to_rgb_array(as_int32)[0, :, 1].tolist() == [0, 1, 128, 255]


def test_image_modes_that_cannot_be_mapped_are_refused(tmp_path):
    Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float.tif.*floating-point image"):
        read_rgb(tmp_path / "float.tif")
    Image.fromarray(np.array([[0, 1 << 20]], dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match="beyond 16 bits"):
        read_rgb(tmp_path / "wide.tif")


def test_palette_transparency_cmyk_and_grey_alpha_read_as_rgb(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png").tolist() == [[[10, 20, 30], [200, 100, 50]]]
    Image.new("CMYK", (1, 1), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = read_rgb(tmp_path / "c.jpg")[0, 0]
    assert r > 200 and g < 60 and b < 60  # red
    Image.new("LA", (1, 1), (90, 0)).save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png").tolist() == [[[90, 90, 90]]]


def test_truncated_and_foreign_files_name_themselves(sprites, tmp_path):
    jpeg = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:600])
    with pytest.raises(ValueError, match="cut.jpg.*truncated"):
        read_rgb(jpeg)
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ValueError, match="notes.png.*not an image"):
        read_rgb(tmp_path / "notes.png")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_rgb(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# 8: annotation files that would make evaluation silently wrong


def write_coco(tmp_path: Path, sprites: Path, edit) -> Path:
    data = json.loads((sprites / "val" / "annotations.json").read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "annotation id 1 .*more than once"),
    (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "image id 1 .*more than once"),
    (lambda d: d["annotations"][2].pop("id"), "annotation number 2 .*has no 'id'"),
    (lambda d: d["annotations"][0].update(bbox=["1", "2", "3", "4"]), "four numbers"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [256, 256], "counts": "garbage!!"}),
     "does not decode|is an RLE of size"),
])
def test_bad_annotation_files_are_refused_with_the_reason(sprites, tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        CocoInstanceDataset(sprites / "val" / "images", write_coco(tmp_path, sprites, edit))


def test_a_missing_area_is_computed_from_the_mask(sprites, tmp_path):
    path = write_coco(tmp_path, sprites, lambda d: [a.pop("area") for a in d["annotations"]])
    original = CocoInstanceDataset(sprites / "val" / "images", sprites / "val" / "annotations.json")
    filled = CocoInstanceDataset(sprites / "val" / "images", path)
    for aid, ann in original.coco.anns.items():
        assert filled.coco.anns[aid]["area"] == pytest.approx(ann["area"], abs=1)


def test_evaluation_without_annotations_is_refused(sprites, tmp_path):
    path = write_coco(tmp_path, sprites, lambda d: d.update(annotations=[]))
    dataset = CocoInstanceDataset(sprites / "val" / "images", path)
    with pytest.raises(ValueError, match="no annotations.*AP is undefined"):
        evaluate_results(dataset.coco, [])


# ---------------------------------------------------------------------------------------------------------------
# 9-11: mistakes get one line, and the smaller guarantees


@pytest.mark.parametrize("flags, message", [
    (["--set", "image_size=0"], "image size 0"),
    (["--set", "image_size=100"], "multiple of 32"),
    (["--max-iters", "0"], "max-iters must be at least 1"),
    (["--set", "min_lr_ratio=-1"], "min_lr_ratio must be between 0.0 and 1.0"),
    (["--set", "weight_decay=-1"], "weight_decay must be at least 0.0"),
    (["--device", "cuda:7"], "cuda"),
    (["--data", "/nonexistent"], "no dataset at /nonexistent"),
    (["--set", "mosiac=false"], "unknown setting 'mosiac'; did you mean mosaic"),
    (["--set", "epochs=many"], "--set epochs=many: expected int"),
    (["--set", "mosaic"], "is not KEY=VALUE"),
])
def test_train_mistakes_are_one_line(sprites, tmp_path, capsys, flags, message):
    if flags[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    argv = ["train", "--data", str(sprites), "--out", str(tmp_path / "run"), "--epochs", "1", "--set", "progress=false",
            *flags]
    status, err = run_cli(argv, capsys)
    assert status == 2 and message in one_line_error(err) and "rtmdet-lesson train: error:" in err
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli(["--debug", "predict", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "c.pth")])


def test_api_mistakes_name_the_fix(sprites, tmp_path):
    model = build_model("course-sprites").eval()
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="positive multiple of 32"):
        predict(model, image, canvas_size=0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        predict(model, image, batch_size=0)
    dataset = CocoInstanceDataset(sprites / "val" / "images", sprites / "val" / "annotations.json")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        predict_dataset(model, dataset, batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA GPU.*--device cpu"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("gpu")


def test_checkpoint_file_mistakes_are_named(checkpoint, tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="empty \\(0 bytes\\)"):
        load_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4000))
    model = build_model("course-sprites")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint") as info:
        load_mmdet_checkpoint(model, tmp_path / "noise.pth")
    assert "weights_only=False" not in str(info.value)  # never advise unsafe loading of a file that is no checkpoint
    with pytest.raises(ValueError, match="written by rtmdet_lesson.*load_checkpoint_model"):
        load_mmdet_checkpoint(model, checkpoint)


def test_a_full_disk_is_named_and_the_old_file_kept(checkpoint, tmp_path, monkeypatch):
    target = tmp_path / "last.pth"
    shutil.copy(checkpoint, target)
    before = target.read_bytes()

    def full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4416 vs 4304")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError, match="no space left") as info:
        save_checkpoint(target, build_model("course-sprites"))
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_stale_temporary_files_are_cleaned_and_the_umask_honoured(tmp_path):
    stale = tmp_path / ".last.pth.abc123.tmp"
    stale.write_bytes(b"left by kill -9")
    previous = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "last.pth", build_model("course-sprites"))
    finally:
        os.umask(previous)
    assert not stale.exists()
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_signal_stop_exits_non_zero(sprites, tmp_path, monkeypatch):
    import signal

    def stop_by_sigterm(record):
        if record["iteration"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    real_train = train_module.train
    monkeypatch.setattr(train_module, "train", lambda *a, **k: real_train(*a, **k, on_step=stop_by_sigterm))
    argv = ["train", "--data", str(sprites), "--out", str(tmp_path / "run"), "--set", "image_size=64", "--epochs", "2",
            "--batch-size", "4", "--workers", "0", "--augment", "none", "--set", "stage2_epochs=0",
            "--set", "progress=false"]
    assert cli(argv) == 128 + signal.SIGTERM
    assert cli([*argv[:1], "--resume", str(tmp_path / "run" / "last.pth"), "--set", "progress=false",
                "--max-iters", "2"]) == 0
