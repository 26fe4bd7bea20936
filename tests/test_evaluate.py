"""COCO evaluation: perfect predictions score 1.0 through the real path; empty results do not crash."""

import copy
import json

import pytest
import torch

from rtmdet_lesson.data.coco import sprites_split
from rtmdet_lesson.data.sprites import generate_sprites
from rtmdet_lesson.evaluate import STAT_NAMES, evaluate_coco, evaluate_results, predict_dataset
from rtmdet_lesson.postprocess import InferenceConfig, Instances
from rtmdet_lesson.preprocess import letterbox_geometry
from rtmdet_lesson.presets import build_model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sprites")
    generate_sprites(root, seed=0, n_train=0, n_val=4)
    ds = sprites_split(root, "val")
    assert sum(len(ds[i][1]["labels"]) for i in range(len(ds))) > 5
    return ds


def perfect_results(dataset, skip_image=None, score=1.0):
    """The ground truth itself, turned into predictions through Instances.to_coco."""
    results = []
    for i in range(len(dataset)):
        image, target = dataset[i]
        if target["image_id"] == skip_image:
            continue
        g = len(target["labels"])
        found = Instances(target["boxes"], torch.full((g,), score), target["labels"], target["masks"],
                          letterbox_geometry(tuple(image.shape[1:]), (320, 320)))
        results += found.to_coco(target["image_id"], dataset.label_to_category_id)
    return results


def test_perfect_predictions_score_one(dataset):
    results = perfect_results(dataset)
    before = copy.deepcopy(results)
    metrics = evaluate_results(dataset.coco, results)
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)
    assert metrics["bbox_AP50"] == pytest.approx(1.0) and metrics["segm_AR100"] == pytest.approx(1.0)
    assert set(metrics) == {f"{t}_{n}" for t in ("bbox", "segm") for n in STAT_NAMES}
    assert results == before  # loadRes mutates what it is given: evaluate_results passes a copy


def test_low_scored_false_positives_do_not_hurt_but_high_scored_ones_do(dataset):
    results = perfect_results(dataset, score=0.9)
    wrong = [dict(r, category_id=r["category_id"] % 5 + 1) for r in results]  # right place, wrong class
    low = evaluate_results(dataset.coco, results + [dict(r, score=0.1) for r in wrong])
    high = evaluate_results(dataset.coco, results + [dict(r, score=0.95) for r in wrong])
    assert low["segm_AP"] == pytest.approx(1.0)
    assert high["segm_AP"] < 0.9


def test_an_image_without_detections_counts_as_misses(dataset):
    image_id = next(dataset[i][1]["image_id"] for i in range(len(dataset)) if len(dataset[i][1]["labels"]))
    metrics = evaluate_results(dataset.coco, perfect_results(dataset, skip_image=image_id))
    assert 0 < metrics["bbox_AP"] < 1 and 0 < metrics["segm_AP"] < 1


def test_no_detections_at_all_gives_zero_not_a_crash(dataset):
    metrics = evaluate_results(dataset.coco, [])  # pycocotools' loadRes refuses an empty list
    assert metrics["bbox_AP"] == 0.0 and metrics["segm_AP"] == 0.0
    assert all(v <= 0 for v in metrics.values())


def test_boxes_only(dataset):
    results = [{k: v for k, v in r.items() if k != "segmentation"} for r in perfect_results(dataset)]
    assert evaluate_results(dataset.coco, results, iou_types=("bbox",))["bbox_AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_results(dataset.coco, results)


def test_evaluate_coco_runs_a_model_and_writes_json(dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model("course-sprites").eval()
    model.input_size = 64  # small canvas: this checks the wiring, not accuracy
    out = tmp_path / "results" / "val.json"
    config = InferenceConfig(score_thr=0.0, max_per_img=3)
    metrics = evaluate_coco(model, dataset, config=config, batch_size=3, results_file=out, progress=False)
    assert {"bbox_AP", "segm_AP"} <= set(metrics) and -1 <= metrics["segm_AP"] <= 1
    written = json.loads(out.read_text())
    assert len(written) == 3 * len(dataset)
    assert {r["category_id"] for r in written} <= set(dataset.label_to_category_id.values())
    assert all(isinstance(r["segmentation"]["counts"], str) for r in written)


def test_evaluate_coco_with_no_detections(dataset):
    model = build_model("course-sprites-det").eval()
    model.input_size = 64
    metrics = evaluate_coco(model, dataset, config=InferenceConfig(score_thr=0.99), progress=False)
    assert metrics["bbox_AP"] == 0.0 and "segm_AP" not in metrics  # a detector has no masks


def test_a_subset_of_images(dataset):
    first = dataset[0][1]["image_id"]
    results = [r for r in perfect_results(dataset) if r["image_id"] == first]
    assert results  # val image 1 of seed 0 has 9 sprites
    assert evaluate_results(dataset.coco, results, image_ids=[first])["segm_AP"] == pytest.approx(1.0)
    assert evaluate_results(dataset.coco, results)["segm_AP"] < 1.0  # the other images count as misses


def test_evaluate_coco_on_chosen_images(dataset):
    model = build_model("course-sprites").eval()
    model.input_size = 64
    config = InferenceConfig(score_thr=0.0, max_per_img=2)
    results = predict_dataset(model, dataset, config, indices=[1, 3], progress=False)
    assert {r["image_id"] for r in results} == {dataset.ids[1], dataset.ids[3]}
    metrics = evaluate_coco(model, dataset, config=config, indices=[1, 3], progress=False, canvas_size=96)
    assert 0 <= metrics["bbox_AR100"] <= 1
