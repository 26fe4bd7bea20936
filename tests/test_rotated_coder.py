"""The rotated box coder (rtmdet_lesson.rotated.coder): hand-computed boxes and round trips."""

import math

import torch

from rtmdet_lesson.rotated.coder import distance_angle_to_rbox, rbox_to_distance_angle
from rtmdet_lesson.rotated.geometry import rbox_to_corners


def test_decode_by_hand():
    point = torch.tensor([100.0, 50.0])
    # angle 0: the plain distance coder, centre moved by ((r - l) / 2, (b - t) / 2)
    box = distance_angle_to_rbox(point, torch.tensor([2.0, 4.0, 6.0, 8.0]), torch.tensor(0.0))
    torch.testing.assert_close(box, torch.tensor([102.0, 52.0, 8.0, 12.0, 0.0]))
    # angle pi/2: the box's x axis points along +y, its y axis along -x, so the centre offset (2, 2) turns
    # into (-2, 2); pi/2 is outside le90's [-pi/2, pi/2) and wraps to -pi/2, w and h stay
    box = distance_angle_to_rbox(point, torch.tensor([2.0, 4.0, 6.0, 8.0]), torch.tensor(math.pi / 2))
    torch.testing.assert_close(box, torch.tensor([98.0, 52.0, 8.0, 12.0, -math.pi / 2]))


def test_decoded_box_sides_are_at_the_distances():
    # measure the decoded rectangle's sides from the point, in the rotated frame, by corners
    point = torch.tensor([10.0, -3.0], dtype=torch.float64)
    distances = torch.tensor([1.5, 2.0, 4.0, 0.5], dtype=torch.float64)
    angle = torch.tensor(0.7, dtype=torch.float64)
    corners = rbox_to_corners(distance_angle_to_rbox(point, distances, angle))  # (4, 2)
    c, s = math.cos(0.7), math.sin(0.7)
    local = (corners - point) @ torch.tensor([[c, -s], [s, c]], dtype=torch.float64)  # rows: (x', y') per corner
    torch.testing.assert_close(local[:, 0].min(), -distances[0])  # left
    torch.testing.assert_close(local[:, 1].min(), -distances[1])  # top
    torch.testing.assert_close(local[:, 0].max(), distances[2])  # right
    torch.testing.assert_close(local[:, 1].max(), distances[3])  # bottom


def test_round_trip_batched():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(4, 100, 2, generator=g, dtype=torch.float64) * 64
    distances = torch.rand(4, 100, 4, generator=g, dtype=torch.float64) * 20 - 2  # some negative
    angles = (torch.rand(4, 100, generator=g, dtype=torch.float64) - 0.5) * math.pi  # already le90
    boxes = distance_angle_to_rbox(points, distances, angles)
    assert boxes.shape == (4, 100, 5)
    back_d, back_a = rbox_to_distance_angle(points, boxes)
    torch.testing.assert_close(back_d, distances)
    torch.testing.assert_close(back_a, angles)
    # and encoding a box then decoding it gives the box back
    torch.testing.assert_close(distance_angle_to_rbox(points, back_d, back_a), boxes)


def test_angle_outside_le90_is_wrapped_not_swapped():
    point = torch.zeros(2)
    box = distance_angle_to_rbox(point, torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor(3.0))
    assert box[2].item() == 2.0 and box[3].item() == 2.0
    torch.testing.assert_close(box[4], torch.tensor(3.0 - math.pi))
