"""The rotated box coder: a prior point, four distances and an angle <-> a rotated box (chapter 10).

RTMDet-R predicts, at each prior point p, four distances (left, top, right, bottom) and an angle a. The
distances are measured in the **box's own frame**: turn the picture by -a about p and they are the plain
distances from p to the four sides of an axis-aligned box. So the box has

    w = left + right,   h = top + bottom,
    centre = p + R(a) ((right - left) / 2, (bottom - top) / 2),   R(a) = [[cos a, -sin a], [sin a, cos a]],

and the angle, wrapped into [-pi/2, pi/2) (w and h are not swapped). This is mmrotate's
``DistanceAnglePointCoder`` with ``angle_version='le90'`` (``distance2obb`` / ``obb2distance``), used
without clipping to the image. The angle comes from the ``rtm_ang`` conv as is, in radians
(``PseudoAngleCoder``: no encoding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtmdet_lesson.rotated.geometry import norm_angle_le90


def _rotate(vectors: Tensor, angle: Tensor) -> Tensor:
    """Turn 2-vectors (..., 2) by angles (...) (counter-clockwise in x-right, y-up axes) -> (..., 2)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    x, y = vectors[..., 0], vectors[..., 1]
    return torch.stack([x * cos - y * sin, x * sin + y * cos], dim=-1)


def distance_angle_to_rbox(points: Tensor, distances: Tensor, angle: Tensor) -> Tensor:
    """Decode: points (..., 2), distances (..., 4) (left, top, right, bottom), angle (...) in radians
    -> rotated boxes (..., 5) (cx, cy, w, h, angle in [-pi/2, pi/2)). Chapter 10 builds this.

    Negative distances are kept (early in training a side can lie on the wrong side of the point); no clipping.
    """
    wh = distances[..., :2] + distances[..., 2:]  # (..., 2) (left + right, top + bottom)
    offset = (distances[..., 2:] - distances[..., :2]) / 2  # (..., 2) centre - point, in the box frame
    center = points + _rotate(offset, angle)  # (..., 2)
    return torch.cat([center, wh, norm_angle_le90(angle)[..., None]], dim=-1)  # (..., 5)


def rbox_to_distance_angle(points: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Encode, the inverse of :func:`distance_angle_to_rbox`: points (..., 2), boxes (..., 5) ->
    (distances (..., 4) as (left, top, right, bottom), angle (...)). Negative where the point is outside."""
    offset = _rotate(points - boxes[..., :2], -boxes[..., 4])  # (..., 2) point - centre, in the box frame
    half = boxes[..., 2:4] / 2  # (..., 2)
    distances = torch.cat([half + offset, half - offset], dim=-1)  # (..., 4) (left, top, right, bottom)
    return distances, boxes[..., 4]
