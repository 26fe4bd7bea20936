"""Rotated non-maximum suppression, plain and class-aware (chapter 10).

The same greedy walk as the package's axis-aligned ``nms.batched_nms`` (chapter 08), with two differences:
the overlap is :func:`rotated_iou`, and a box is dropped when its IoU with a better kept box is **greater than
or equal to** the threshold, as mmcv's ``nms_rotated`` CPU kernel decides (the axis-aligned reference uses
strictly greater). RTMDet-R's test config uses IoU 0.1.

The walk is ``nms.greedy_walk``: IoU rows are computed a block of boxes at a time, only against the boxes after
the block's start and only for boxes still alive, so K boxes never build a (K, K, 24, 2) polygon tensor at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtmdet_lesson.nms import greedy_walk
from rtmdet_lesson.rotated.geometry import check_rboxes
from rtmdet_lesson.rotated.iou import rotated_iou


def batched_rotated_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_keep: int | None = None
) -> Tensor:
    """Class-aware greedy rotated NMS: a box only suppresses boxes of its own label. Chapter 10 builds this.

    Args:
        boxes: ``(K, 5)`` (cx, cy, w, h, angle); scores: ``(K,)``; labels: ``(K,)`` int.
        iou_threshold: a box is dropped when its rotated IoU with a better kept box of its class is at least this.
        max_keep: stop after this many kept boxes (the same result as truncating the full answer).

    Returns:
        kept indices ``(M,)`` int64 into the inputs, highest score first; equal scores keep input order.

    Pairs of different labels are masked out of the IoU rows (exact for any coordinates) rather than
    shifting each class far away, the usual offset trick, which loses precision at large offsets.
    """
    check_rboxes(boxes)
    if boxes.ndim != 2 or scores.shape != boxes.shape[:1] or labels.shape != scores.shape:
        raise ValueError(f"rotated NMS wants boxes (K, 5), scores (K,) and labels (K,); got {tuple(boxes.shape)}, "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    return greedy_walk(boxes, scores, labels, lambda a, b: rotated_iou(a, b) >= iou_threshold, max_keep)


def rotated_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Greedy rotated NMS over all boxes regardless of class: ``(K, 5)``, ``(K,)`` -> kept indices, best first."""
    labels = torch.zeros(scores.shape, dtype=torch.int64, device=scores.device)
    return batched_rotated_nms(boxes, scores, labels, iou_threshold, max_keep)
