"""The exponential moving average of the weights that the reference evaluates and ships (chapter 07).

The reference's ExpMomentumEMA (mmdet/models/layers/ema.py on mmengine's ExponentialMovingAverage), called
after every optimizer step. Step indexing, as in mmengine: ``steps`` counts the updates done so far.

- update with steps = 0 (the first): copy the model (no averaging);
- update with steps = k >= 1: ``ema <- (1 - m_k) * ema + m_k * param`` with
  ``m_k = (1 - momentum) * exp(-(1 + k) / gamma) + momentum``, momentum = 0.0002, gamma = 2000.

So m starts near 1 (the average follows the model closely while it changes fast) and decays to 0.0002 (an
average over the last ~5000 iterations). With ``update_buffers`` (the reference's setting) floating-point
buffers such as BatchNorm running statistics are averaged the same way; integer buffers such as
``num_batches_tracked`` are copied from the model (mmengine leaves them at their first value; they only matter
for BatchNorm with momentum=None).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def ema_momentum(step: int, momentum: float = 0.0002, gamma: float = 2000.0) -> float:
    """The weight m of the model in update number ``step`` (>= 1; update 0 copies). Chapter 07 builds this."""
    return (1 - momentum) * math.exp(-(1 + step) / gamma) + momentum


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel, so the state_dict keys match."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ExpMomentumEMA:
    """An EMA copy of a model; ``ema.module`` is an ``nn.Module`` with the averaged weights. Chapter 07 builds this.

    Call ``ema.update(model)`` after every optimizer step. Evaluate and save ``ema.module`` (kept in eval
    mode). ``state_dict()`` / ``load_state_dict()`` include the step count, for resuming.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.0002, gamma: float = 2000.0, update_buffers: bool = True):
        if not 0 < momentum < 1 or gamma <= 0:
            raise ValueError(f"EMA needs 0 < momentum < 1 and gamma > 0, got momentum={momentum}, gamma={gamma}.")
        self.module = copy.deepcopy(_unwrap(model)).requires_grad_(False).eval()
        self.momentum, self.gamma, self.update_buffers, self.steps = momentum, gamma, update_buffers, 0

    def _tracked(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Name -> tensor of what is averaged: the state_dict with buffers, else the parameters only."""
        return model.state_dict(keep_vars=True) if self.update_buffers else dict(model.named_parameters())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights (and buffers) into the average; counts one step."""
        model = _unwrap(model)
        source, target = self._tracked(model), self._tracked(self.module)
        if source.keys() != target.keys():
            differ = sorted(set(target) ^ set(source))[:5]
            raise ValueError(f"The model does not match the EMA copy (keys differ, e.g. {differ}); "
                             "update the EMA with the same model it was built from.")
        m = ema_momentum(self.steps, self.momentum, self.gamma)
        for name, avg in target.items():
            src = source[name].detach()
            if self.steps == 0 or not avg.dtype.is_floating_point:
                avg.copy_(src)
            else:
                # avg + m * (src - avg) = (1 - m) * avg + m * src
                avg.lerp_(src.to(device=avg.device, dtype=avg.dtype), m)
        if not self.update_buffers:
            for avg, src in zip(self.module.buffers(), model.buffers(), strict=True):
                avg.copy_(src)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
