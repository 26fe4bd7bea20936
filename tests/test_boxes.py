"""Box coding, areas, IoU and GIoU against hand-computed values."""

import pytest
import torch

from rtmdet_lesson.boxes import (
    aligned_giou,
    aligned_iou,
    box_area,
    box_iou,
    box_to_distance,
    distance_to_box,
)


def test_distance_round_trip_and_hand_values():
    points = torch.tensor([[8.0, 16.0], [0.0, 0.0]])
    distances = torch.tensor([[2.0, 4.0, 6.0, 8.0], [1.0, 1.0, 3.0, 5.0]])
    boxes = distance_to_box(points, distances)
    torch.testing.assert_close(boxes, torch.tensor([[6.0, 12.0, 14.0, 24.0], [-1.0, -1.0, 3.0, 5.0]]))
    torch.testing.assert_close(box_to_distance(points, boxes), distances)


def test_distance_to_box_clamps_only_when_asked():
    points = torch.tensor([[4.0, 4.0]])
    distances = torch.tensor([[10.0, 10.0, 100.0, 2.0]])
    torch.testing.assert_close(distance_to_box(points, distances), torch.tensor([[-6.0, -6.0, 104.0, 6.0]]))
    torch.testing.assert_close(
        distance_to_box(points, distances, max_shape=(5, 32)), torch.tensor([[0.0, 0.0, 32.0, 5.0]])
    )


def test_distance_coding_broadcasts_over_a_batch():
    points = torch.rand(7, 2) * 50
    distances = torch.rand(3, 7, 4) * 20
    boxes = distance_to_box(points, distances)
    assert boxes.shape == (3, 7, 4)
    torch.testing.assert_close(boxes[1], distance_to_box(points, distances[1]))
    torch.testing.assert_close(box_to_distance(points, boxes), distances)


def test_box_area_is_not_clamped():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 3.0], [5.0, 0.0, 3.0, 2.0]])
    torch.testing.assert_close(box_area(boxes), torch.tensor([12.0, -4.0]))


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [10.0, 10.0, 11.0, 11.0]])
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [4 / 16, 4 / 16, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)
    torch.testing.assert_close(aligned_iou(a, b[:2]), torch.tensor([1 / 7, 4 / 16]))


def test_box_iou_of_degenerate_boxes_uses_eps_not_nan():
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert box_iou(point, point).item() == 0.0
    assert aligned_giou(point, point).item() == 0.0


def test_box_iou_batched_and_empty():
    a = torch.rand(2, 5, 2) * 10
    a = torch.cat([a, a + torch.rand(2, 5, 2) * 10 + 0.1], dim=-1)
    b = a[:, :3].flip(1)
    iou = box_iou(a, b)
    assert iou.shape == (2, 5, 3)
    torch.testing.assert_close(iou[1], box_iou(a[1], b[1]))
    assert box_iou(a[0], torch.zeros(0, 4)).shape == (5, 0)


def test_giou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    # pair 0: IoU 1/7, enclosing 3x3 = 9, union 7 -> 1/7 - 2/9; pair 1: IoU 0, enclosing 3, union 2 -> -1/3
    expected = torch.tensor([1 / 7 - 2 / 9, -1 / 3, 1.0])
    torch.testing.assert_close(aligned_giou(a, b), expected)


def test_giou_far_apart_tends_to_minus_one():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1000.0, 1000.0, 1001.0, 1001.0]])
    assert -1.0 <= aligned_giou(a, b).item() < -0.999


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_are_kept(dtype):
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=dtype)
    assert box_iou(a, a).dtype == dtype
    assert aligned_giou(a, a).dtype == dtype
    assert distance_to_box(a[:, :2], a, max_shape=(4, 4)).dtype == dtype
