"""Rotated NMS (rtmdet_lesson.rotated.nms) against a slow pure-Python greedy reference."""

import math

import pytest
import torch

from rtmdet_lesson.rotated import batched_rotated_nms, rotated_iou, rotated_nms


def slow_nms(boxes, scores, labels, threshold):
    """The textbook greedy loop, one box at a time, on the whole IoU matrix (the IoU itself is tested apart)."""
    iou = rotated_iou(boxes, boxes).tolist()
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if all(labels[i] != labels[j] or iou[i][j] < threshold for j in keep):
            keep.append(i)
    return keep


def clustered_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n, 2, generator=g) * 60
    sizes = torch.rand(n, 2, generator=g) * 30 + 5
    angles = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    return torch.cat([centers, sizes, angles], dim=1), torch.rand(n, generator=g)


@pytest.mark.parametrize("threshold", [0.1, 0.5])
def test_matches_the_slow_reference(threshold):
    boxes, scores = clustered_boxes(300, seed=0)  # more than two blocks of 128
    labels = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(1))
    keep = rotated_nms(boxes, scores, threshold)
    assert keep.tolist() == slow_nms(boxes, scores, torch.zeros(300, dtype=torch.int64), threshold)
    keep = batched_rotated_nms(boxes, scores, labels, threshold)
    assert keep.tolist() == slow_nms(boxes, scores, labels, threshold)
    assert (scores[keep].diff() <= 0).all()  # highest score first


def test_hand_made_case_and_threshold_is_inclusive():
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0, 0.0],
        [5.0, 0.0, 10.0, 10.0, 0.0],  # IoU with box 0 exactly 50 / 150 = 1/3
        [0.0, 0.0, 10.0, 10.0, math.pi],  # the same as box 0 (angle + pi)
        [40.0, 0.0, 10.0, 10.0, 0.3],  # far away
    ], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    assert rotated_nms(boxes, scores, 1 / 3).tolist() == [0, 3]  # IoU == threshold suppresses
    assert rotated_nms(boxes, scores, 1 / 3 + 1e-6).tolist() == [0, 1, 3]
    labels = torch.tensor([0, 1, 0, 0])
    assert batched_rotated_nms(boxes, scores, labels, 0.1).tolist() == [0, 1, 3]  # other class survives


def test_max_keep_truncates_and_empty_input():
    boxes, scores = clustered_boxes(200, seed=2)
    full = rotated_nms(boxes, scores, 0.3)
    assert rotated_nms(boxes, scores, 0.3, max_keep=5).tolist() == full[:5].tolist()
    assert rotated_nms(torch.zeros(0, 5), torch.zeros(0), 0.1).shape == (0,)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"boxes \(K, 5\)"):
        rotated_nms(torch.zeros(4, 5), torch.zeros(3), 0.1)
