"""The mask loss's steps, computed faster on a CPU with the same values (chapter 09).

``FAST_MASK_LOSS`` swaps three steps of ``criterion.mask_loss`` (``criterion.MaskLossSteps``):

- the dynamic mask head, chunked to stay in the cache (``fast.dynamic_mask``);
- the x2 upsampling as two small matrix products ``A_y @ L @ A_x.T`` (the bilinear weights of
  ``fast.mask_resize.interpolation_matrix``), whose backward is two more products instead of a scatter;
- the Dice loss with a floor on the logits and its gradient written by hand (``SigmoidDice``).

The floor: a trained model's background logits spread down to about -100. Between about -88 and -40 their
sigmoid, its square or their gradients are denormal floats, which many CPUs compute on a slow microcoded path,
and the backward carries them through the upsampling and the dynamic convs. Logits below ``DICE_LOGIT_FLOOR``
(-30) count as -30: there p = 9e-14, so the loss moves by less than 1e-9 and the gradients it zeroes are below
1e-12 of the batch's largest, lost in fp32 rounding when the batch's gradients are summed. (The reference does
not clamp; ``tests/test_losses.py`` compares the two.)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rtmdet_lesson.criterion import MaskLossSteps
from rtmdet_lesson.fast.dynamic_mask import dynamic_mask_logits
from rtmdet_lesson.fast.mask_resize import interpolation_matrix
from rtmdet_lesson.losses import DICE_EPS

DICE_LOGIT_FLOOR = -30.0  # lower logits count as -30: sigmoid(-30) = 9e-14, no denormal floats


def upsample_x2(logits: Tensor) -> Tensor:
    """``criterion.upsample_x2`` (bilinear x2, align_corners False) as ``A_y @ L @ A_x.T``: ``(K, h, w) ->
    (K, 2h, 2w)``."""
    k, h, w = logits.shape
    a_y = interpolation_matrix(h, 2 * h, logits.dtype, logits.device)  # (2h, h)
    a_x = a_y if w == h else interpolation_matrix(w, 2 * w, logits.dtype, logits.device)  # (2w, w)
    return a_y @ logits @ a_x.T  # (K, 2h, 2w)


def dice_loss(mask_logits: Tensor, target_masks: Tensor, eps: float = DICE_EPS) -> Tensor:
    """``losses.dice_loss`` with the logit floor and the hand-written gradient: (K, h, w), (K, h, w) -> (K,)."""
    if mask_logits.shape != target_masks.shape:
        raise ValueError(f"mask_logits {tuple(mask_logits.shape)} and target_masks {tuple(target_masks.shape)} must "
                         "have the same (K, h, w) shape; resize or slice the targets to the logits' stride")
    return SigmoidDice.apply(mask_logits, target_masks, eps)


class SigmoidDice(torch.autograd.Function):
    """The Dice loss of sigmoid(max(x, floor)) with its gradient by hand: (K, h, w), (K, h, w) -> (K,).

    With p = sigmoid(max(x, floor)), O = sum(p * t), D = sum(p^2) + sum(t^2) + 2 eps and loss = 1 - 2 O / D:

        dloss/dp = -2 t / D + 4 O p / D^2,    dloss/dx = dloss/dp * p (1 - p) where x >= floor, else 0.

    Autograd through the formula writes a map of (K, h*w) numbers for every step (the clamp, the sigmoid, the
    targets' cast, each product and its gradient, the clamp's mask). This writes fewer: the sigmoid and the
    gradient in place, no t * t for bool targets (t^2 = t), bool targets cast through uint8, and the floor's zeros
    as a product with a 0/1 mask.
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


FAST_MASK_LOSS = MaskLossSteps(mask_logits=dynamic_mask_logits, upsample=upsample_x2, dice=dice_loss)
