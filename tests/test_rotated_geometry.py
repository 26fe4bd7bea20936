"""Rotated box geometry: corners, le90, points inside (rtmdet_lesson.rotated.geometry)."""

import math

import pytest
import torch

from rtmdet_lesson.rotated import (
    corners_to_rbox,
    norm_angle_le90,
    points_in_rboxes,
    rbox_area,
    rbox_to_corners,
    regularize_le90,
)


def test_corners_by_hand():
    # a 4 x 2 box at (10, 20) turned by 90 degrees: its w side runs along +y, its h side along -x
    box = torch.tensor([10.0, 20.0, 4.0, 2.0, math.pi / 2])
    expected = torch.tensor([[9.0, 22.0], [11.0, 22.0], [11.0, 18.0], [9.0, 18.0]])
    torch.testing.assert_close(rbox_to_corners(box), expected, atol=1e-6, rtol=0)
    # angle 0: the plain axis-aligned box
    flat = rbox_to_corners(torch.tensor([0.0, 0.0, 4.0, 2.0, 0.0]))
    torch.testing.assert_close(flat, torch.tensor([[2.0, 1.0], [2.0, -1.0], [-2.0, -1.0], [-2.0, 1.0]]))


def test_corners_round_trip_le90():
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([torch.rand(200, 2, generator=g) * 100, torch.rand(200, 2, generator=g) * 50 + 1,
                       (torch.rand(200, 1, generator=g) - 0.5) * 4 * math.pi], dim=1).double()
    back = corners_to_rbox(rbox_to_corners(boxes))  # (200, 5) le90
    le90 = regularize_le90(boxes)
    torch.testing.assert_close(back, le90)
    # and the corners are the same rectangle: same corner set (order may rotate by the w/h swap)
    torch.testing.assert_close(rbox_to_corners(back).sort(dim=-2).values.sum(-2),
                               rbox_to_corners(boxes).sort(dim=-2).values.sum(-2))


def test_regularize_le90_by_hand():
    boxes = torch.tensor([
        [0.0, 0.0, 4.0, 5.0, 0.5],  # h longer: swap, angle + pi/2, then wrapped by pi
        [0.0, 0.0, 5.0, 4.0, 0.5],  # already le90
        [0.0, 0.0, 5.0, 4.0, math.pi / 2],  # angle pi/2 wraps to -pi/2
        [0.0, 0.0, 5.0, 4.0, -3 * math.pi / 4],  # wraps to pi/4
        [0.0, 0.0, 3.0, 3.0, 0.25],  # square: w > h fails, so it swaps like mmrotate
    ], dtype=torch.float64)
    out = regularize_le90(boxes)
    expected = torch.tensor([
        [0.0, 0.0, 5.0, 4.0, 0.5 + math.pi / 2 - math.pi],
        [0.0, 0.0, 5.0, 4.0, 0.5],
        [0.0, 0.0, 5.0, 4.0, -math.pi / 2],
        [0.0, 0.0, 5.0, 4.0, math.pi / 4],
        [0.0, 0.0, 3.0, 3.0, 0.25 + math.pi / 2 - math.pi],
    ], dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    assert (out[:, 4] >= -math.pi / 2).all() and (out[:, 4] < math.pi / 2).all()


def test_norm_angle_le90_range_and_period():
    angles = torch.linspace(-10, 10, 1001)
    wrapped = norm_angle_le90(angles)
    assert (wrapped >= -math.pi / 2).all() and (wrapped < math.pi / 2).all()
    turns = (angles - wrapped) / math.pi
    torch.testing.assert_close(turns, turns.round(), atol=1e-5, rtol=0)
    # remainder can round a tiny negative number up to pi: still inside the half-open range
    tiny = norm_angle_le90(torch.tensor([-math.pi / 2 - 1e-12, -math.pi / 2 + 1e-12], dtype=torch.float32))
    assert (tiny >= -math.pi / 2).all() and (tiny < math.pi / 2).all()


def test_points_in_rboxes_uses_the_box_frame():
    box = torch.tensor([[0.0, 0.0, 10.0, 2.0, math.pi / 2]])  # a vertical bar after the turn
    points = torch.tensor([[0.0, 4.0], [4.0, 0.0], [0.0, 5.0], [0.0, 4.995]])
    inside = points_in_rboxes(points, box)[:, 0]
    assert inside.tolist() == [True, False, True, True]  # on the boundary counts without eps
    inside_eps = points_in_rboxes(points, box, eps=0.01)[:, 0]  # mmrotate's find_inside_points eps
    assert inside_eps.tolist() == [True, False, False, False]


def test_area_takes_absolute_sides():
    assert rbox_area(torch.tensor([0.0, 0.0, -3.0, 2.0, 1.0])).item() == 6.0


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.zeros(3, 5, dtype=torch.int64)])
def test_bad_input_is_named(bad):
    from rtmdet_lesson.rotated import rotated_iou

    with pytest.raises(ValueError, match="a must"):
        rotated_iou(bad, torch.zeros(2, 5))
