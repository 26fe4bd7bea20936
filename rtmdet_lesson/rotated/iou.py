"""Rotated IoU by convex polygon clipping, batched and differentiable, in plain torch (chapter 10).

The overlap of two rectangles is a convex polygon with at most 8 vertices. Every one of them is one of

- a corner of box A that lies inside box B (4 candidates),
- a corner of box B that lies inside box A (4 candidates),
- a point where an edge of A crosses an edge of B (4 x 4 = 16 candidates).

So each pair of boxes gets a fixed set of 24 candidate points and a mask of the ones that are real. The
real ones are put in order by their angle around their mean (a convex polygon's vertices are in angle order
around any interior point), the masked ones are replaced by the first vertex (zero-length edges add no
area), and the shoelace formula gives the area. Everything is tensors of shape (..., 24, 2): no Python loop
over pairs, any device, and autograd gives the gradient (the ordering is a permutation, so it needs none).
For every pair of two sets (``aligned=False``) only the pairs whose circumscribed circles meet are clipped;
the others cannot overlap and get 0.

Numerics, each a choice with a reason:

- Both boxes are moved so that A's centre is the origin before any corner is computed, so boxes far from
  the origin (coordinates ~1e4) lose no precision to large coordinates: IoU does not depend on position.
- "Inside" allows a tolerance of ``64 * eps(dtype)`` times the pair's size, so that corners lying on the
  other box's boundary (identical boxes, a box and the same box turned by pi, touching edges) count.
- Edges that are parallel to within that tolerance do not intersect (their overlap's ends are corners
  already counted); their division is done on a safe denominator so that no NaN reaches the gradient.

mmcv's exact CPU kernel ``box_iou_rotated`` returns 0.2523 for a box and the same box turned by pi (the true
IoU is 1), and its differentiable ``diff_iou_rotated_2d`` (the one mmrotate's ``RotatedIoULoss`` calls) runs
only on CUDA and is inexact for two thin crossing bars (0.142 where the truth is 0.112).
``tests/test_rotated_iou.py`` checks this module against exact polygon intersection (shapely, float64) on
random boxes and on such cases: a box turned by pi, thin crossing bars, touching edges, containment, zero
area, coordinates ~1e4.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtmdet_lesson.rotated.geometry import check_rboxes, rbox_area, rbox_to_corners

IOU_EPS = 1e-6  # the union is clamped to this before dividing, as the package's axis-aligned box_iou does


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """z of the cross product of 2-vectors: (..., 2), (..., 2) -> (...)."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: Tensor, center: Tensor, half_size: Tensor, cos: Tensor, sin: Tensor, tol: Tensor) -> Tensor:
    """points (..., K, 2) inside the box with centre (..., 2), half sides (..., 2), angle cos/sin (...), up to
    ``tol`` (...) -> (..., K) bool."""
    d = points - center[..., None, :]  # (..., K, 2)
    local_x = d[..., 0] * cos[..., None] + d[..., 1] * sin[..., None]  # (..., K) along the w side
    local_y = -d[..., 0] * sin[..., None] + d[..., 1] * cos[..., None]  # (..., K) along the h side
    tol = tol[..., None]
    return (local_x.abs() <= half_size[..., None, 0] + tol) & (local_y.abs() <= half_size[..., None, 1] + tol)


def _edge_crossings(corners_a: Tensor, corners_b: Tensor, tol_sin: float) -> tuple[Tensor, Tensor]:
    """Crossings of every edge of A with every edge of B: corners (..., 4, 2) each -> points (..., 16, 2), mask
    (..., 16). Edge i of a box runs from corner i to corner i + 1 (mod 4)."""
    p = corners_a[..., :, None, :]  # (..., 4, 1, 2) start of A's edges
    r = (corners_a.roll(-1, dims=-2) - corners_a)[..., :, None, :]  # (..., 4, 1, 2) A's edge vectors
    q = corners_b[..., None, :, :]  # (..., 1, 4, 2) start of B's edges
    s = (corners_b.roll(-1, dims=-2) - corners_b)[..., None, :, :]  # (..., 1, 4, 2) B's edge vectors
    den = _cross(r, s)  # (..., 4, 4) |r||s| sin(angle between the edges)
    lengths = r.norm(dim=-1) * s.norm(dim=-1)  # (..., 4, 4)
    crossing = den.abs() > tol_sin * lengths  # not parallel (zero-length edges are parallel to everything)
    safe_den = torch.where(crossing, den, torch.ones_like(den))  # no 0/0 in the forward or the backward pass
    qp = q - p  # (..., 4, 4, 2)
    t = _cross(qp, s) / safe_den  # (..., 4, 4) position along A's edge
    u = _cross(qp, r) / safe_den  # (..., 4, 4) position along B's edge
    crossing = crossing & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    points = p + t[..., None] * r  # (..., 4, 4, 2)
    return points.flatten(-3, -2), crossing.flatten(-2)  # (..., 16, 2), (..., 16)


def _polygon_area(points: Tensor, mask: Tensor) -> Tensor:
    """Area of the convex polygon whose vertices are the masked-in points: (..., K, 2), (..., K) -> (...).

    The order is found without gradient (angle around the vertices' mean); the area, by the shoelace formula
    on the reordered points, carries it.
    """
    with torch.no_grad():
        count = mask.sum(dim=-1, keepdim=True)  # (..., 1)
        center = (points * mask[..., None]).sum(dim=-2) / count.clamp(min=1)  # (..., 2)
        d = points - center[..., None, :]  # (..., K, 2)
        angle = torch.atan2(d[..., 1], d[..., 0]).masked_fill(~mask, float("inf"))  # (..., K) masked last
        order = angle.argsort(dim=-1)  # (..., K)
        sorted_mask = mask.gather(-1, order)  # (..., K)
    vertices = points.gather(-2, order[..., None].expand_as(points))  # (..., K, 2) in angle order
    vertices = vertices - center[..., None, :]  # small numbers in the products below
    vertices = torch.where(sorted_mask[..., None], vertices, vertices[..., :1, :])  # padding = first vertex
    twice_area = _cross(vertices, vertices.roll(-1, dims=-2)).sum(dim=-1)  # (...,)
    return (twice_area.abs() / 2) * (count[..., 0] >= 3)


def intersection_area(a: Tensor, b: Tensor) -> Tensor:
    """Overlap area of rotated boxes that broadcast against each other: (..., 5), (..., 5) -> (...).

    Chapter 10 derives it step by step. Sides are taken as absolute values (a negative side is the same
    rectangle). Each box's corners and angle are computed once, in its own shape ((N, 1, 5) against (1, M, 5)
    for every pair); only the clipping works on the pairs.
    """
    a_size, b_size = a[..., 2:4].abs(), b[..., 2:4].abs()  # (..., 2) each
    b_center = b[..., :2] - a[..., :2]  # (..., 2) b's centre in a frame centred on a's: no large coordinates
    a_origin = torch.cat([torch.zeros_like(a[..., :2]), a_size, a[..., 4:]], dim=-1)  # (..., 5) a at the origin
    b_origin = torch.cat([torch.zeros_like(b[..., :2]), b_size, b[..., 4:]], dim=-1)  # (..., 5) b at the origin
    corners_a = rbox_to_corners(a_origin)  # (..., 4, 2)
    corners_b = rbox_to_corners(b_origin) + b_center[..., None, :]  # (..., 4, 2) for every pair

    rel_tol = 64 * torch.finfo(a.dtype).eps
    with torch.no_grad():
        size = torch.maximum(torch.maximum(a_size.amax(dim=-1), b_size.amax(dim=-1)), b_center.abs().amax(dim=-1))
        tol = rel_tol * size  # (...,) how far outside a boundary a point may lie and still count as on it
        a_in_b = _inside(corners_a, b_center, b_size / 2, b[..., 4].cos(), b[..., 4].sin(), tol)  # (..., 4)
        b_in_a = _inside(corners_b, torch.zeros_like(b_center), a_size / 2, a[..., 4].cos(), a[..., 4].sin(), tol)
    corners_a, corners_b = torch.broadcast_tensors(corners_a, corners_b)  # (..., 4, 2) each, every pair
    crossings, crossing_mask = _edge_crossings(corners_a, corners_b, rel_tol)  # (..., 16, 2), (..., 16)
    points = torch.cat([corners_a, corners_b, crossings], dim=-2)  # (..., 24, 2)
    a_in_b, b_in_a = torch.broadcast_tensors(a_in_b, b_in_a)
    mask = torch.cat([a_in_b, b_in_a, crossing_mask], dim=-1)  # (..., 24)
    area = _polygon_area(points, mask)
    # a polygon assembled from rounded points can come out a hair larger than the smaller box
    return torch.minimum(area, torch.minimum(rbox_area(a), rbox_area(b)))


def rotated_iou(a: Tensor, b: Tensor, aligned: bool = False, eps: float = IOU_EPS) -> Tensor:
    """IoU of rotated boxes (cx, cy, w, h, angle in radians). Chapter 10 builds this.

    Args:
        a: ``(N, 5)``; b: ``(M, 5)`` (``(N, 5)`` when ``aligned``).
        aligned: False gives every pair, ``(N, M)``; True gives the matching pairs ``a[i], b[i]``, ``(N,)``.
        eps: the union is clamped to at least this before dividing (boxes of zero area give IoU 0, not NaN).

    Returns:
        IoU in [0, 1] on the inputs' device, in their dtype, differentiable in both inputs.
    """
    check_rboxes(a, "a")
    check_rboxes(b, "b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"rotated_iou wants a (N, 5) and b (M, 5), got {tuple(a.shape)} and {tuple(b.shape)}; "
                         "flatten leading dimensions with reshape(-1, 5)")
    if aligned and a.shape != b.shape:
        raise ValueError(f"aligned=True pairs a[i] with b[i], so a and b need the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}; use aligned=False for every pair")
    if aligned:
        return _aligned_iou(a, b, eps)
    # Only pairs whose circumscribed circles meet can overlap; clip just those (in a sparse scene, a few percent).
    with torch.no_grad():
        radius_a, radius_b = a[:, 2:4].norm(dim=1) / 2, b[:, 2:4].norm(dim=1) / 2  # (N,), (M,)
        distance = (a[:, None, :2] - b[None, :, :2]).norm(dim=2)  # (N, M)
        rows, cols = (distance <= radius_a[:, None] + radius_b[None, :]).nonzero(as_tuple=True)  # (P,) each
    ious = _aligned_iou(a[rows], b[cols], eps)  # (P,)
    return a.new_zeros((len(a), len(b))).index_put((rows, cols), ious)  # (N, M)


def _aligned_iou(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """IoU of matching pairs: (P, 5), (P, 5) -> (P,)."""
    overlap = intersection_area(a, b)  # (P,)
    union = (rbox_area(a) + rbox_area(b) - overlap).clamp(min=eps)
    return overlap / union
