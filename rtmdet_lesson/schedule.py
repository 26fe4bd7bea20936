"""The learning-rate schedule and the optimizer's parameter groups of the reference recipe (chapter 07).

Per iteration i (param_scheduler in configs/rtmdet/rtmdet_l_8xb32-300e_coco.py):

- linear warm-up over ``warmup_iters``: factor ``s + (1 - s) * i / (warmup_iters - 1)`` with s = 1e-5, so the
  factor is s at i = 0 and reaches 1 at i = warmup_iters - 1 (mmengine's LinearLR, ``end - begin - 1`` steps);
- flat at the base lr until ``flat_until_iter`` (epoch 150 of 300 in the reference);
- cosine from there to ``total_iters``: ``eta_min + (base - eta_min) * (1 + cos(pi * t / T)) / 2`` with
  t = i - flat_until_iter, T = total_iters - flat_until_iter and eta_min = ``min_lr_ratio`` * base (0.05).

If a short run makes the warm-up reach into the cosine part, the two factors multiply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def lr_at(
    iteration: int,
    base_lr: float,
    *,
    flat_until_iter: int,
    total_iters: int,
    warmup_iters: int = 1000,
    warmup_start_factor: float = 1e-5,
    min_lr_ratio: float = 0.05,
) -> float:
    """The learning rate used at ``iteration`` (0-based): warm-up, flat, then cosine. Chapter 07 builds this."""
    if not 0 <= flat_until_iter <= total_iters:
        raise ValueError(
            f"flat_until_iter ({flat_until_iter}) must lie in [0, total_iters={total_iters}]; "
            "the reference flattens for half the run (epoch 150 of 300)."
        )
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}.")
    warmup = 1.0
    if warmup_iters > 1:
        progress = min(iteration, warmup_iters - 1) / (warmup_iters - 1)
        warmup = warmup_start_factor + (1 - warmup_start_factor) * progress
    t = min(max(iteration - flat_until_iter, 0), total_iters - flat_until_iter)
    span = max(total_iters - flat_until_iter, 1)
    cosine = min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * t / span)) / 2
    return base_lr * warmup * cosine


@dataclass
class FlatCosineFactor:
    """``lr_at(i, 1.0, ...)`` as a callable for ``LambdaLR`` (a dataclass, so the scheduler's state_dict saves it).

    Chapter 07 builds this.
    """

    flat_until_iter: int
    total_iters: int
    warmup_iters: int = 1000
    warmup_start_factor: float = 1e-5
    min_lr_ratio: float = 0.05

    def __call__(self, iteration: int) -> float:
        return lr_at(
            iteration,
            1.0,
            flat_until_iter=self.flat_until_iter,
            total_iters=self.total_iters,
            warmup_iters=self.warmup_iters,
            warmup_start_factor=self.warmup_start_factor,
            min_lr_ratio=self.min_lr_ratio,
        )


def build_lr_scheduler(optimizer: torch.optim.Optimizer, **schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following ``lr_at`` (keyword arguments as ``FlatCosineFactor``); step it every iteration.

    The optimizer's lr is the base lr. Right after construction the lr is the one of iteration 0; after k calls
    of ``scheduler.step()`` it is the one of iteration k. Chapter 07 builds this.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, FlatCosineFactor(**schedule))


NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights with ``weight_decay``; norm parameters and every bias without decay.

    The reference's norm_decay_mult = 0 and bias_decay_mult = 0. ``named_parameters`` lists a parameter shared
    by several modules (a shared conv) once, so each parameter lands in exactly one group
    (bypass_duplicate). Parameters with ``requires_grad=False`` are left out. Chapter 07 builds this.
    """
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_bias = name.rsplit(".", 1)[-1] == "bias"
        (no_decay if id(param) in norm_ids or is_bias else decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
