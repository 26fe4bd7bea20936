"""Box arithmetic: distance coding around prior points, areas, IoU and GIoU (chapters 03, 05 and 06).

Boxes are x1y1x2y2 in pixels. Like the reference (mmdetection's ``bbox_overlaps``), areas are not clamped
(a box with x2 < x1 has a negative area) and unions and enclosing areas are clamped to ``eps`` before dividing.
Every function broadcasts over leading dimensions and keeps its inputs' device and dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

IOU_EPS = 1e-6  # the reference's default for BboxOverlaps2D and GIoULoss


def distance_to_box(points: Tensor, distances: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
    """Decode distances (left, top, right, bottom) measured from prior points into x1y1x2y2 boxes.

    points (..., 2) as (x, y); distances (..., 4) in pixels -> boxes (..., 4). ``max_shape`` (H, W) clamps the
    boxes to the image, as at test time; training decodes without clamping. Chapter 03 builds this.
    """
    x1y1 = points - distances[..., :2]  # (..., 2)
    x2y2 = points + distances[..., 2:]  # (..., 2)
    boxes = torch.cat([x1y1, x2y2], dim=-1)  # (..., 4)
    if max_shape is not None:
        h, w = max_shape
        limit = boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum(boxes.clamp(min=0), limit)
    return boxes


def box_to_distance(points: Tensor, boxes: Tensor) -> Tensor:
    """The inverse of :func:`distance_to_box`: points (..., 2), boxes (..., 4) -> (left, top, right, bottom).

    Negative values mean the point lies outside the box on that side. Chapter 03 builds this.
    """
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)  # (..., 4)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of x1y1x2y2 boxes: (..., 4) -> (...). Not clamped, as in the reference."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: Tensor, b: Tensor, eps: float = IOU_EPS) -> Tensor:
    """IoU of every box in ``a`` with every box in ``b``: (..., N, 4), (..., M, 4) -> (..., N, M).

    The union is clamped to ``eps`` (1e-6, the reference's BboxOverlaps2D). Chapter 05 uses it for the
    assignment costs; chapter 08's NMS uses it too.
    """
    a, b = a[..., :, None, :], b[..., None, :, :]  # (..., N, 1, 4), (..., 1, M, 4)
    # Width and height of the overlaps one at a time: no (..., N, M, 2) temporaries (the assigner's peak memory).
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_(min=0)  # (..., N, M)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_(min=0)  # (..., N, M)
    overlap = w.mul_(h)  # (..., N, M)
    del h
    union = (box_area(a) + box_area(b)).sub_(overlap).clamp_(min=eps)  # (..., N, M)
    return overlap.div_(union)


def _aligned_overlap_union(a: Tensor, b: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    lt = torch.maximum(a[..., :2], b[..., :2])  # (..., 2)
    rb = torch.minimum(a[..., 2:], b[..., 2:])  # (..., 2)
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (box_area(a) + box_area(b) - overlap).clamp(min=eps)
    return overlap, union


def aligned_iou(a: Tensor, b: Tensor, eps: float = IOU_EPS) -> Tensor:
    """IoU of matching pairs: a (..., 4), b (..., 4) -> (...). Chapter 06 uses it."""
    overlap, union = _aligned_overlap_union(a, b, eps)
    return overlap / union


def aligned_giou(a: Tensor, b: Tensor, eps: float = IOU_EPS) -> Tensor:
    """Generalised IoU of matching pairs: (..., 4), (..., 4) -> (...) in [-1, 1].

    GIoU = IoU - (enclosing area - union) / enclosing area, with the enclosing area clamped to ``eps``
    (1e-6, the reference's GIoULoss). Chapter 06 builds this.
    """
    overlap, union = _aligned_overlap_union(a, b, eps)
    enclose_lt = torch.minimum(a[..., :2], b[..., :2])  # (..., 2)
    enclose_rb = torch.maximum(a[..., 2:], b[..., 2:])  # (..., 2)
    enclose_wh = (enclose_rb - enclose_lt).clamp(min=0)
    enclose = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
    return overlap / union - (enclose - union) / enclose
