"""The shipped checkpoint still scores what data/course-sprites.json (and the README) say it does.

Chapter 07 trains it, chapters 00 and 08 use it. Re-evaluating it on the sprites val split through the real
predict -> decode -> COCO path means a regression in decoding or evaluation cannot go unnoticed. The val
split is regenerated from its seed, so the test needs no data/ folder.
"""

import json

import pytest
from conftest import REPO_ROOT

from rtmdet_lesson.checkpoint import load_checkpoint_model
from rtmdet_lesson.data.coco import sprites_split
from rtmdet_lesson.data.sprites import generate_sprites
from rtmdet_lesson.evaluate import evaluate_coco

CHECKPOINT = REPO_ROOT / "data" / "course-sprites.pth"
RECORD = REPO_ROOT / "data" / "course-sprites.json"
TOLERANCE = 0.01  # AP moves in the third decimal with thread count and CPU; a real regression moves more


@pytest.fixture(scope="module")
def record():
    return json.loads(RECORD.read_text())


def test_the_checkpoint_records_what_it_needs(record):
    model = load_checkpoint_model(CHECKPOINT, device="cpu")
    assert model.preset == record["preset"] == "course-sprites"
    assert model.class_names == ["portrait", "character", "slime", "chest", "coin"]
    assert model.input_size == record["image_size"]


def test_val_ap_matches_the_record(record, tmp_path):
    generate_sprites(tmp_path, seed=record["data_seed"], n_train=0, n_val=record["val_images"])
    metrics = evaluate_coco(
        load_checkpoint_model(CHECKPOINT, device="cpu"), sprites_split(tmp_path, "val"), config="eval", progress=False
    )
    assert metrics["bbox_AP"] == pytest.approx(record["bbox_AP"], abs=TOLERANCE)
    assert metrics["segm_AP"] == pytest.approx(record["segm_AP"], abs=TOLERANCE)
