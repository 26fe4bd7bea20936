"""Non-maximum suppression, greedy and class-aware, in plain torch (chapter 08 builds this).

Greedy NMS walks the boxes from the highest score down and drops every later box that overlaps a kept one
by more than the IoU threshold. Here the IoU rows are computed a block of boxes at a time (one ``box_iou``
call per block, only against the boxes after the block's start, only for boxes not yet dropped), and the
walk inside a block is a short loop over bool rows. With ``max_keep`` the walk stops as soon as enough boxes
are kept: the reference keeps ``max_per_img`` boxes after NMS anyway, and those are exactly the first ones
the greedy walk keeps, so usually only the first block's IoUs are ever computed.
"""

from __future__ import annotations

import numpy as np
import torch

from rtmdet_lesson.boxes import box_iou

BLOCK = 128  # boxes whose IoU rows are computed together


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float,
    max_keep: int | None = None,
) -> torch.Tensor:
    """Class-aware greedy NMS: a box only suppresses boxes of its own label. Chapter 08 builds this.

    Args:
        boxes: ``(K, 4)`` x1y1x2y2; scores: ``(K,)``; labels: ``(K,)`` int.
        iou_threshold: a box is dropped when its IoU with a better kept box of its class is **strictly
            greater** than this (the reference's rule).
        max_keep: stop after this many kept boxes (same result as truncating the full answer).

    Returns:
        kept indices ``(M,)`` int64 into the inputs, highest score first; equal scores keep input order.

    Pairs of different labels are masked out of the IoU rows instead of using the usual "shift each class
    far apart" offset trick, which is exact for any coordinates.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1] or labels.shape != scores.shape:
        raise ValueError(
            f"batched_nms wants boxes (K, 4), scores (K,) and labels (K,); got {tuple(boxes.shape)}, "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}."
        )
    return greedy_walk(boxes, scores, labels, lambda a, b: box_iou(a, b) > iou_threshold, max_keep)


def greedy_walk(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, suppresses,
                max_keep: int | None = None) -> torch.Tensor:
    """The greedy walk behind ``batched_nms`` (and chapter 10's rotated NMS), for any box format.

    ``suppresses(a, b)`` gives a bool ``(R, M)``: whether box ``a[r]``, if kept, drops box ``b[m]`` of the same
    label. Returns kept indices ``(M,)`` into the inputs, highest score first; equal scores keep input order.
    """
    order = torch.sort(scores, descending=True, stable=True).indices  # (K,)
    boxes, labels = boxes[order], labels[order]
    k = boxes.shape[0]
    limit = k if max_keep is None else max_keep
    removed = np.zeros(k, dtype=bool)
    keep: list[int] = []
    for start in range(0, k, BLOCK):
        if len(keep) >= limit:
            break
        rows = start + np.flatnonzero(~removed[start : start + BLOCK])  # boxes of this block still alive
        if rows.size == 0:
            continue
        rows_t = torch.as_tensor(rows, device=boxes.device)
        over = suppresses(boxes[rows_t], boxes[start:])  # (R, K - start)
        over &= labels[rows_t, None] == labels[None, start:]  # only within a class
        over = over.cpu().numpy()
        for row, i in zip(over, rows, strict=True):
            if removed[i]:
                continue
            keep.append(int(i))
            if len(keep) >= limit:
                break
            row[: i - start + 1] = False  # a box never suppresses itself or better boxes
            removed[start:] |= row
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int | None = None) -> torch.Tensor:
    """Greedy NMS over all boxes regardless of class: ``(K, 4)``, ``(K,)`` -> kept indices, best first."""
    return batched_nms(boxes, scores, torch.zeros(scores.shape, dtype=torch.int64, device=scores.device),
                       iou_threshold, max_keep)
