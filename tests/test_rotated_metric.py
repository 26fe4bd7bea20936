"""DOTA mAP (rtmdet_lesson.rotated.metric) on hand-made cases with hand-computed APs."""

import math

import numpy as np
import pytest
import torch

from rtmdet_lesson.rotated.metric import ELEVEN_POINTS, average_precision, dota_metrics, rotated_map


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)


def _det(rows, scores, labels):
    scores = torch.tensor(scores, dtype=torch.float64)
    return {"rboxes": _boxes(*rows), "scores": scores, "labels": torch.tensor(labels, dtype=torch.int64)}


def _gt(rows, labels, difficult=None):
    out = {"rboxes": _boxes(*rows), "labels": torch.tensor(labels, dtype=torch.int64)}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult)
    return out


A, B = (10, 10, 8, 4, 0.3), (50, 50, 8, 4, -1.0)  # two objects far apart


def test_average_precision_by_hand():
    # TP, FP (a duplicate), TP over 2 objects: recall 0.5, 0.5, 1; precision 1, 1/2, 2/3
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    # 11 points: levels 0 .. 0.5 (six) see precision 1, levels 0.6 .. 1 (five) see 2/3
    assert average_precision(recall, precision) == pytest.approx((6 + 5 * 2 / 3) / 11)
    # area: 0.5 x 1 + 0.5 x 2/3
    assert average_precision(recall, precision, "area") == pytest.approx(0.5 + 0.5 * 2 / 3)
    with pytest.raises(ValueError, match="mode"):
        average_precision(recall, precision, "101points")


def test_the_same_case_through_matching():
    dets = [_det([A, A, B], [0.9, 0.8, 0.7], [0, 0, 0])]
    gts = [_gt([A, B], [0, 0])]
    result = rotated_map(dets, gts, num_classes=1)
    assert result["mAP"][0] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert result["num_gts"].tolist() == [2] and result["num_dets"].tolist() == [3]


def test_recall_of_exactly_three_tenths_misses_the_point_at_0_3():
    # numpy.arange(0, 1.1, 0.1) holds 0.30000000000000004, above 3/10: both references count 3 levels, not 4
    assert ELEVEN_POINTS[3] > 0.3
    objects = [(20.0 * k, 0.0, 8.0, 4.0, 0.0) for k in range(10)]
    dets = [_det(objects[:3], [0.9, 0.8, 0.7], [0, 0, 0])]
    result = rotated_map(dets, [_gt(objects, [0] * 10)], num_classes=1)
    assert result["mAP"][0] == pytest.approx(3 / 11)


def test_difficult_objects_are_ignored():
    # the best-scored detection hits a difficult object: neither TP nor FP, and that object is not counted
    dets = [_det([B, A], [0.95, 0.5], [0, 0])]
    gts = [_gt([A, B], [0, 0], difficult=[False, True])]
    result = rotated_map(dets, gts, num_classes=1)
    assert result["mAP"][0] == 1.0 and result["num_gts"].tolist() == [1]
    # two ordinary objects and only A found: recall stops at 0.5, so six of the eleven levels see precision 1
    assert rotated_map([_det([A], [0.5], [0])], [_gt([A, B], [0, 0])], 1)["mAP"][0] == pytest.approx(6 / 11)


def test_classes_without_ground_truth_leave_the_mean_and_undetected_ones_count_zero():
    dets = [_det([A, B], [0.9, 0.9], [0, 2])]  # class 2 has no ground truth: left out, not a zero
    gts = [_gt([A, B], [0, 1])]  # class 1 is never detected: AP 0
    result = rotated_map(dets, gts, num_classes=3)
    assert result["AP"][0].tolist()[:2] == [1.0, 0.0] and math.isnan(result["AP"][0, 2])
    assert result["mAP"][0] == 0.5


def test_rotated_iou_decides_the_match_and_ap_over_thresholds():
    # a 2 x 1 box and the same box turned by 90 degrees: IoU 1 / 3
    turned = [_det([(0, 0, 2, 1, math.pi / 2)], [0.9], [0])]
    gts = [_gt([(0, 0, 2, 1, 0)], [0])]
    result = rotated_map(turned, gts, 1, iou_thresholds=(0.3, 0.5))
    assert result["mAP"].tolist() == [1.0, 0.0]
    # a 10 x 10 box shifted by 1 along its own axis: IoU 90 / 110 = 0.818, a hit at 0.50 .. 0.80 (7 of 10)
    shifted = [_det([(1 * math.cos(0.4), 1 * math.sin(0.4), 10, 10, 0.4)], [0.9], [0])]
    metrics = dota_metrics(shifted, [_gt([(0, 0, 10, 10, 0.4)], [0])], ["square"])
    assert metrics["rbox_mAP50"] == 1.0 and metrics["rbox_AP75"] == 1.0
    assert metrics["rbox_AP"] == pytest.approx(0.7) and metrics["rbox_AP50_square"] == 1.0


def test_images_without_detections_or_objects():
    dets = [_det([], [], []), _det([A], [0.9], [0])]
    gts = [_gt([A], [0]), _gt([], [])]  # the only detection is in the image without objects: a false positive
    assert rotated_map(dets, gts, 1)["mAP"][0] == 0.0
    with pytest.raises(ValueError, match="one of each per image"):
        rotated_map(dets, gts[:1], 1)
