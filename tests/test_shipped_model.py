"""The shipped checkpoint still scores what data/course-sprites.json (and the README) say it does.

Chapter 07 trains it, chapters 00 and 08 use it. Re-evaluating it on the sprites val split through the real
predict -> decode -> COCO path means a regression in decoding or evaluation cannot go unnoticed. The val
split is regenerated from its seed, so the test needs no data/ folder.
"""

import pytest
import torch
from conftest import check_recorded_recipe_is_the_presets, check_shipped_checkpoint, shipped

from rtmdet_lesson.checkpoint import load_checkpoint_model
from rtmdet_lesson.data.coco import sprites_split
from rtmdet_lesson.data.sprites import generate_sprites
from rtmdet_lesson.evaluate import evaluate_coco
from rtmdet_lesson.fast import low_precision_dtype, optimize_for_inference

CHECKPOINT, RECORD = shipped("course-sprites")
TOLERANCE = 0.01  # AP moves in the third decimal with thread count and CPU; a real regression moves more


@pytest.fixture(scope="module")
def record():
    return RECORD


def test_the_checkpoint_records_what_it_needs():
    check_shipped_checkpoint("course-sprites")


def test_train_course_sprites_trains_with_the_shipped_recipe():
    check_recorded_recipe_is_the_presets("course-sprites")


@pytest.fixture(scope="module")
def val_split(record, tmp_path_factory):
    root = tmp_path_factory.mktemp("sprites")
    generate_sprites(root, seed=record["data_seed"], n_train=0, n_val=record["val_images"])
    return sprites_split(root, "val")


@pytest.fixture(scope="module")
def fp32_metrics(val_split):
    return evaluate_coco(load_checkpoint_model(CHECKPOINT, device="cpu"), val_split, config="eval", progress=False)


def test_val_ap_matches_the_record(record, fp32_metrics):
    assert fp32_metrics["bbox_AP"] == pytest.approx(record["bbox_AP"], abs=TOLERANCE)
    assert fp32_metrics["segm_AP"] == pytest.approx(record["segm_AP"], abs=TOLERANCE)


@pytest.mark.parametrize("speed", ["exact", "fast"])
def test_the_fast_path_keeps_the_val_ap(speed, val_split, fp32_metrics):
    """Chapter 09's promise: "exact" (fold BN, one cls pass, channels-last) and "fast" (+ bf16 where the CPU has
    bf16 units, else the same as exact) score the fp32 model's COCO AP within 0.01."""
    if speed == "fast" and low_precision_dtype(torch.device("cpu")) is None:
        pytest.skip("this CPU has no bf16 units: 'fast' runs in fp32 here, which the 'exact' case covers")
    fast = optimize_for_inference(load_checkpoint_model(CHECKPOINT, device="cpu"), speed)
    metrics = evaluate_coco(fast, val_split, config="eval", progress=False)
    tolerance = 0.002 if speed == "exact" else TOLERANCE  # exact: only float rounding moves
    assert metrics["bbox_AP"] == pytest.approx(fp32_metrics["bbox_AP"], abs=tolerance)
    assert metrics["segm_AP"] == pytest.approx(fp32_metrics["segm_AP"], abs=tolerance)
