"""The three losses of RTMDet-Ins, unreduced: quality focal loss, GIoU loss and Dice loss (chapter 06).

Each function returns one value per prior or per instance; the weights (1, 2, 2) and the normalisers (sum of
IoU targets, sum of IoU targets, number of positives) are applied in :mod:`rtmdet_lesson.criterion`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rtmdet_lesson.boxes import IOU_EPS, aligned_giou

DICE_EPS = 5e-6  # the RTMDet-Ins configs' DiceLoss eps
DICE_LOGIT_FLOOR = -30.0  # lower logits count as -30 in dice_loss: sigmoid(-30) = 9e-14, no denormal floats


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
    1 - 2 * sum(p * t) / (sum(p^2) + eps + sum(t^2) + eps), p = sigmoid(logits).

    Logits below ``DICE_LOGIT_FLOOR`` (-30) count as -30 (chapter 09 section 8). A trained model's background
    logits spread down to -100; between about -88 and -40 their sigmoid, its square or their gradients are
    denormal floats, which a CPU computes on a slow path, and the backward carries them through the upsampling
    and the dynamic convs: ~10 % of a training step. At the floor p = 9e-14, so the loss moves by less than 1e-9,
    and the gradients it zeroes are below 1e-12 of the batch's largest, lost in fp32 rounding when the batch's
    gradients are summed (the reference does not clamp; ``tests/test_losses.py`` compares the two).

    The gradient is written by hand (``SigmoidDice``, chapter 09 section 8): the same loss and, to fp32
    rounding, the same gradient as autograd through the formula, in fewer and cheaper passes over the maps.
    """
    if mask_logits.shape != target_masks.shape:
        raise ValueError(f"mask_logits {tuple(mask_logits.shape)} and target_masks {tuple(target_masks.shape)} must "
                         "have the same (K, h, w) shape; resize or slice the targets to the logits' stride")
    return SigmoidDice.apply(mask_logits, target_masks, eps)


class SigmoidDice(torch.autograd.Function):
    """``dice_loss`` with its gradient by hand: (K, h, w) logits, (K, h, w) targets -> (K,). Chapter 09.

    With p = sigmoid(max(x, floor)), O = sum(p * t), D = sum(p^2) + sum(t^2) + 2 eps and loss = 1 - 2 O / D:

        dloss/dp = -2 t / D + 4 O p / D^2,    dloss/dx = dloss/dp * p (1 - p) where x >= floor, else 0.

    Autograd through the formula writes 13 maps of (K, h*w) numbers, forward and backward: the clamp, the sigmoid,
    the targets' cast, three products, a product per factor and their sums, the sigmoid's gradient, the clamp's mask
    and its select. This writes 10 (the sigmoid and two steps of the gradient in place, no t * t for bool targets)
    and casts bool targets through uint8, ~5x faster than bool to float; it zeroes the gradient below the floor by a
    product with a 0/1 float mask, ~5x faster than ``masked_fill_``: about half the time at K = 472 (chapter 09
    section 8 times both).
    """

    @staticmethod
    def forward(ctx, mask_logits: Tensor, target_masks: Tensor, eps: float) -> Tensor:
        x = mask_logits.flatten(1)  # (K, h*w)
        p = x.clamp(min=DICE_LOGIT_FLOOR).sigmoid_()  # (K, h*w)
        t = target_masks.flatten(1)  # (K, h*w)
        t = (t.view(torch.uint8) if t.dtype == torch.bool else t).to(p.dtype)
        overlap = torch.linalg.vecdot(p, t)  # (K,) sum(p * t)
        t_squares = t.sum(dim=1) if target_masks.dtype == torch.bool else torch.linalg.vecdot(t, t)  # (K,)
        denominator = torch.linalg.vecdot(p, p) + eps + t_squares + eps  # (K,)
        ctx.save_for_backward(x, p, t, overlap, denominator)
        ctx.shape = mask_logits.shape
        return 1 - 2 * overlap / denominator

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        x, p, t, overlap, denominator = ctx.saved_tensors
        per_t = (-2 * grad / denominator)[:, None]  # (K, 1)
        per_p = (4 * grad * overlap / denominator**2)[:, None]  # (K, 1)
        grad_p = (p * per_p).addcmul_(t, per_t)  # (K, h*w) dloss/dp
        grad_x = torch.ops.aten.sigmoid_backward(grad_p, p)  # dloss/dp * p * (1 - p) in one pass
        # below the floor the clamp passes no gradient; as masked_fill_ would, but a zeroed negative one reads -0.0
        grad_x.mul_(torch.ge(x, DICE_LOGIT_FLOOR, out=torch.empty_like(grad_x)))
        return grad_x.view(ctx.shape), None, None
