"""The Ins head's class tower run once where the reference runs it twice (chapter 09).

Without a box tower of its own, the reference's Ins head gets its box features from a second pass through the
cls tower (``RTMDetSepBNHead.tower_features``, mmdetection issue #9835). The second pass computes the same
features as the first: same input, same weights and, in training, the same batch statistics. So one pass can
serve both branches. In eval this is exact. In training the reference's second pass also moves each BN's running
statistics a second time (two momentum updates a step); ``tower_features_once`` repeats that update without
autograd, at the cost of one BN forward instead of a conv forward and backward, so outputs, gradients and
running statistics all stay those of the two-pass head.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from rtmdet_lesson.head import SharedConvTower


def cls_tower_counted(tower: nn.Module, x: torch.Tensor, level: int, passes: int = 2) -> torch.Tensor:
    """``tower(x, level)``, with a training tower's BN running statistics updated as by ``passes`` passes."""
    if not (isinstance(tower, SharedConvTower) and tower.training):
        return tower(x, level)  # eval, or a folded tower: no statistics to move
    for conv, norm in zip(tower.convs, tower.norms[level], strict=True):
        x = conv(x)
        with torch.no_grad():
            for _ in range(passes - 1):
                norm(x)  # the later passes' update of the running statistics (the batch statistics are the same)
        x = F.silu(norm(x))
    return x


def tower_features_once(head: nn.Module, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``head.tower_features`` with one pass of the cls tower serving both branches: ``(cls_feats, cls_feats)``."""
    cls_feats = cls_tower_counted(head.cls_tower, x, level)  # (B, feat, H_l, W_l)
    return cls_feats, cls_feats


def use_one_cls_pass(head: nn.Module) -> nn.Module:
    """Swap ``tower_features_once`` into a head whose box branch re-runs the cls tower, in place; returns it.

    A head with its own reg tower is left as it is. ``head.single_cls_pass`` says whether the swap was made.
    """
    if getattr(head, "reg_tower", True) is None:
        head.tower_features = types.MethodType(tower_features_once, head)
        head.single_cls_pass = True
    return head
