"""Rotated boxes: (cx, cy, w, h, angle) <-> four corners, and the le90 convention (chapter 10).

A rotated box is the axis-aligned box of size ``w`` x ``h`` centred on ``(cx, cy)`` and turned by ``angle``
radians about its centre. In image coordinates (y pointing down) a positive angle turns the box clockwise
on screen. The box's own x axis (along ``w``) is ``(cos a, sin a)`` and its y axis (along ``h``) is
``(-sin a, cos a)``, as in mmrotate's ``RotatedBoxes.rbox2corner``.

One rectangle has many such tuples: the angle repeats every pi, and (w, h, a) is the same rectangle as
(h, w, a + pi/2). **le90** picks one (mmrotate's ``RotatedBoxes.regularize_boxes(pattern='le90')``): the
width is the longer side and the angle lies in [-pi/2, pi/2). Its boundary problem: a box turned a little
past pi/2 jumps to an angle near -pi/2, so two almost equal boxes can have angles that differ by almost pi.

Every function broadcasts over leading dimensions and keeps its inputs' device and dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_rboxes(boxes: Tensor, name: str = "boxes") -> None:
    """Raise a ValueError naming the fix unless ``boxes`` is a float tensor (..., 5) of (cx, cy, w, h, angle)."""
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a torch tensor (..., 5) of (cx, cy, w, h, angle), got {type(boxes).__name__}")
    if boxes.ndim < 1 or boxes.shape[-1] != 5:
        raise ValueError(f"{name} must have shape (..., 5) as (cx, cy, w, h, angle in radians), got "
                         f"{tuple(boxes.shape)}; x1y1x2y2 boxes need a conversion first (angle 0)")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {boxes.dtype}; convert with boxes.float()")


def rbox_to_corners(boxes: Tensor) -> Tensor:
    """Corners of rotated boxes: (..., 5) -> (..., 4, 2) as (x, y). Chapter 10 builds this.

    With u = (w/2)(cos a, sin a) and v = (h/2)(-sin a, cos a) the corners are c + u + v, c + u - v, c - u - v,
    c - u + v: one walk around the rectangle (the order of mmrotate's ``rbox2corner``).
    """
    center, w, h, angle = boxes[..., :2], boxes[..., 2:3], boxes[..., 3:4], boxes[..., 4:5]
    cos, sin = torch.cos(angle), torch.sin(angle)  # (..., 1)
    u = torch.cat([w / 2 * cos, w / 2 * sin], dim=-1)  # (..., 2) half of the w side
    v = torch.cat([-h / 2 * sin, h / 2 * cos], dim=-1)  # (..., 2) half of the h side
    return torch.stack([center + u + v, center + u - v, center - u - v, center - u + v], dim=-2)  # (..., 4, 2)


def corners_to_rbox(corners: Tensor) -> Tensor:
    """The inverse of :func:`rbox_to_corners` for rectangles: (..., 4, 2) -> (..., 5), regularised to le90.

    The centre is the mean of the corners; the w side runs from corner 2 to corner 1 (= 2u), the h side from
    corner 1 to corner 0 (= 2v). A quadrilateral that is not a rectangle gets the average of its opposite
    sides, which is not its minimum-area rectangle: convert polygon annotations with a fitting step instead.
    """
    if corners.shape[-2:] != (4, 2):
        raise ValueError(f"corners must have shape (..., 4, 2), got {tuple(corners.shape)}")
    center = corners.mean(dim=-2)  # (..., 2)
    u2 = (corners[..., 1, :] - corners[..., 2, :] + corners[..., 0, :] - corners[..., 3, :]) / 2  # (..., 2) = 2u
    v2 = (corners[..., 0, :] - corners[..., 1, :] + corners[..., 3, :] - corners[..., 2, :]) / 2  # (..., 2) = 2v
    w, h = u2.norm(dim=-1), v2.norm(dim=-1)  # (...,)
    angle = torch.atan2(u2[..., 1], u2[..., 0])  # (...,)
    return regularize_le90(torch.cat([center, w[..., None], h[..., None], angle[..., None]], dim=-1))


def norm_angle_le90(angle: Tensor) -> Tensor:
    """Wrap angles into [-pi/2, pi/2) (mmrotate's ``norm_angle(angle, 'le90')``), any shape.

    Only the angle moves, w and h stay: a turn by pi is the same rectangle, so this never changes the box.
    ``torch.remainder`` can round a tiny negative input up to exactly pi; that case is folded back too.
    """
    wrapped = torch.remainder(angle + math.pi / 2, math.pi) - math.pi / 2
    return torch.where(wrapped >= math.pi / 2, wrapped - math.pi, wrapped)


def regularize_le90(boxes: Tensor) -> Tensor:
    """The le90 form of rotated boxes: width the longer side, angle in [-pi/2, pi/2). (..., 5) -> (..., 5).

    As mmrotate's ``RotatedBoxes.regularize_boxes(pattern='le90')``: where ``w > h`` fails (a square too)
    w and h are swapped and the angle turns by pi/2; then the angle is wrapped by pi. Chapter 10 builds this.
    """
    cx, cy, w, h, angle = boxes.unbind(dim=-1)
    keep = w > h
    long_side, short_side = torch.where(keep, w, h), torch.where(keep, h, w)
    angle = norm_angle_le90(torch.where(keep, angle, angle + math.pi / 2))
    return torch.stack([cx, cy, long_side, short_side, angle], dim=-1)


def rbox_area(boxes: Tensor) -> Tensor:
    """Areas |w * h| of rotated boxes: (..., 5) -> (...); a negative side is the same rectangle as its absolute."""
    return (boxes[..., 2] * boxes[..., 3]).abs()


def points_in_rboxes(points: Tensor, boxes: Tensor, eps: float = 0.0) -> Tensor:
    """Which points lie inside which rotated boxes: points (P, 2), boxes (G, 5) -> (P, G) bool.

    A point is inside when, in the box's own frame, |x| <= w/2 - eps and |y| <= h/2 - eps. mmrotate's
    ``RotatedBoxes.find_inside_points`` uses eps 0.01 so that points on the boundary count as outside
    (the assigner's candidate test). Chapter 10 uses it.
    """
    offset = points[:, None, :] - boxes[None, :, :2]  # (P, G, 2)
    cos, sin = torch.cos(boxes[:, 4]), torch.sin(boxes[:, 4])  # (G,)
    local_x = offset[..., 0] * cos + offset[..., 1] * sin  # (P, G) along the w side
    local_y = -offset[..., 0] * sin + offset[..., 1] * cos  # (P, G) along the h side
    half_w, half_h = boxes[:, 2] / 2 - eps, boxes[:, 3] / 2 - eps  # (G,)
    return (local_x.abs() <= half_w) & (local_y.abs() <= half_h)


def min_area_rbox(points: Tensor) -> Tensor:
    """The minimum-area rectangle around each set of points, in le90: (..., P, 2) -> (..., 5). Chapter 10.

    DOTA annotates objects with four corners that annotators click, so they are rarely an exact rectangle;
    mmrotate turns them into (cx, cy, w, h, angle) with OpenCV's ``cv2.minAreaRect`` (``qbox2rbox`` in
    ``mmrotate/structures/bbox/box_converters.py``). The smallest rectangle around a point set has one side
    along an edge of the set's convex hull (Freeman and Shapira 1975), and every hull edge joins two of the
    points, so it is enough to try the direction of every pair of points: project the points onto the
    direction and onto its normal; the spans give the sides and their middle the centre. No hull, no loop.

    Pairs of equal points give no direction and are skipped; if all points coincide the box has sides 0.
    """
    if points.ndim < 2 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., P, 2), got {tuple(points.shape)}")
    p = points.shape[-2]
    i, j = torch.triu_indices(p, p, offset=1, device=points.device)  # (Q,) every pair once
    d = points[..., j, :] - points[..., i, :]  # (..., Q, 2)
    length = d.norm(dim=-1, keepdim=True)  # (..., Q, 1)
    u = torch.where(length > 0, d / length.clamp_min(torch.finfo(points.dtype).tiny), torch.zeros_like(d))
    u = torch.where(length > 0, u, torch.tensor([1.0, 0.0], dtype=points.dtype, device=points.device))
    v = torch.stack([-u[..., 1], u[..., 0]], dim=-1)  # (..., Q, 2) the normal
    pu = (points[..., None, :, :] * u[..., :, None, :]).sum(-1)  # (..., Q, P) coordinates along u
    pv = (points[..., None, :, :] * v[..., :, None, :]).sum(-1)  # (..., Q, P) along v
    w = pu.amax(-1) - pu.amin(-1)  # (..., Q)
    h = pv.amax(-1) - pv.amin(-1)  # (..., Q)
    area = torch.where(length[..., 0] > 0, w * h, torch.full_like(w, math.inf))  # (..., Q)
    best = area.argmin(dim=-1, keepdim=True)  # (..., 1) the first of equal areas
    pick = lambda t: t.gather(-1, best)[..., 0]  # noqa: E731  (..., Q) -> (...)
    mid_u = (pu.amax(-1) + pu.amin(-1)) / 2  # (..., Q)
    mid_v = (pv.amax(-1) + pv.amin(-1)) / 2
    ux, uy = pick(u[..., 0]), pick(u[..., 1])  # (...)
    cu, cv = pick(mid_u), pick(mid_v)
    cx, cy = cu * ux - cv * uy, cu * uy + cv * ux  # back from the (u, v) frame
    angle = torch.atan2(uy, ux)
    return regularize_le90(torch.stack([cx, cy, pick(w), pick(h), angle], dim=-1))
