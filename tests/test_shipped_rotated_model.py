"""The shipped RTMDet-R checkpoint still scores what data/course-sprites-rotated.json (and the README) say.

Chapter 10 uses it. Re-evaluating it through the real predict -> decode -> rotated NMS -> DOTA mAP path means a
regression in any of them cannot go unnoticed. The val images are regenerated from their seed (the first
``test_images`` of the val split, to keep the test short; the record also holds the whole split's numbers).
"""

import pytest
from conftest import check_recorded_recipe_is_the_presets, check_shipped_checkpoint, shipped

from rtmdet_lesson.checkpoint import load_checkpoint, load_checkpoint_model
from rtmdet_lesson.data.rotated_sprites import generate_rotated_sprites
from rtmdet_lesson.rotated.dota import dota_split
from rtmdet_lesson.rotated.metric import evaluate_rotated
from rtmdet_lesson.rotated.model import RTMDetR

CHECKPOINT, RECORD = shipped("course-sprites-rotated")
TOLERANCE = 0.01  # mAP moves in the third decimal with thread count and CPU; a real regression moves more


@pytest.fixture(scope="module")
def record():
    return RECORD


def test_the_checkpoint_records_what_it_needs():
    checkpoint = load_checkpoint(CHECKPOINT)
    assert all(v.dtype.itemsize == 2 for v in checkpoint["model"].values() if v.is_floating_point())  # fp16
    model = check_shipped_checkpoint("course-sprites-rotated")
    assert isinstance(model, RTMDetR) and model.label_to_category_id == {i: i + 1 for i in range(5)}


def test_train_course_sprites_rotated_trains_with_the_shipped_recipe():
    check_recorded_recipe_is_the_presets("course-sprites-rotated")


def test_val_map_matches_the_record(record, tmp_path):
    subset = record["test_subset"]
    generate_rotated_sprites(tmp_path, seed=record["data_seed"], n_train=0, n_val=subset["val_images"])
    metrics = evaluate_rotated(load_checkpoint_model(CHECKPOINT, device="cpu"), dota_split(tmp_path, "val"),
                               progress=False)
    assert metrics["rbox_mAP50"] == pytest.approx(subset["rbox_mAP50"], abs=TOLERANCE)
    assert metrics["rbox_AP"] == pytest.approx(subset["rbox_AP"], abs=TOLERANCE)
