"""The three losses of RTMDet-Ins, unreduced: quality focal loss, GIoU loss and Dice loss (chapter 06).

Each function returns one value per prior or per instance; the weights (1, 2, 2) and the normalisers (sum of
IoU targets, sum of IoU targets, number of positives) are applied in :mod:`rtmdet_lesson.criterion`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rtmdet_lesson.boxes import IOU_EPS, aligned_giou

DICE_EPS = 5e-6  # the RTMDet-Ins configs' DiceLoss eps


def quality_focal_loss(logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """Quality focal loss with sigmoid, per prior, summed over classes. Chapter 06 builds it.

    logits (N, C); labels (N,) int64 with ``C`` (or anything outside 0..C-1) for background; scores (N,) the soft
    IoU targets of the positives -> (N,).

    Every class of every prior is a negative, BCE(x, 0) * sigmoid(x)^beta, except the GT class of a positive,
    which gets BCE(x, IoU) * |IoU - sigmoid(x)|^beta. With IoU = 1 this is the focal loss (alpha-free).
    """
    sigmoid = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    loss = loss * sigmoid.pow(beta)  # (N, C) every class as a negative
    pos = ((labels >= 0) & (labels < logits.shape[1])).nonzero()[:, 0]  # (K,) positive priors
    pos_labels = labels[pos]  # (K,)
    pos_scores = scores[pos].to(logits.dtype)  # (K,)
    pos_loss = F.binary_cross_entropy_with_logits(logits[pos, pos_labels], pos_scores, reduction="none")
    pos_loss = pos_loss * (pos_scores - sigmoid[pos, pos_labels]).abs().pow(beta)  # (K,)
    return loss.index_put((pos, pos_labels), pos_loss).sum(dim=1)  # (N,)


def giou_loss(pred_boxes: Tensor, target_boxes: Tensor, eps: float = IOU_EPS) -> Tensor:
    """1 - GIoU of matching box pairs: (K, 4), (K, 4) x1y1x2y2 -> (K,) in [0, 2]. Chapter 06 builds it.

    Unlike 1 - IoU it keeps a gradient when the boxes do not overlap: the enclosing-box term pulls them together.
    """
    return 1 - aligned_giou(pred_boxes, target_boxes, eps=eps)


def dice_loss(mask_logits: Tensor, target_masks: Tensor, eps: float = DICE_EPS) -> Tensor:
    """V-Net Dice loss per instance, sigmoid applied inside. Chapter 06 builds it.

    mask_logits (K, h, w), target_masks (K, h, w) bool or float -> (K,) with
    1 - 2 * sum(p * t) / (sum(p^2) + eps + sum(t^2) + eps), p = sigmoid(logits) (mmdet's ``DiceLoss`` with
    ``naive_dice=False``, mmdet/models/losses/dice_loss.py).
    """
    if mask_logits.shape != target_masks.shape:
        raise ValueError(f"mask_logits {tuple(mask_logits.shape)} and target_masks {tuple(target_masks.shape)} must "
                         "have the same (K, h, w) shape; resize or slice the targets to the logits' stride")
    p = mask_logits.sigmoid().flatten(1)  # (K, h*w)
    t = target_masks.flatten(1).to(p.dtype)  # (K, h*w)
    return 1 - 2 * (p * t).sum(1) / ((p * p).sum(1) + eps + (t * t).sum(1) + eps)  # (K,)
