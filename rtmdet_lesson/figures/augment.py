"""Pictures for chapter 07: samples before/after augmentation, the learning-rate schedule, the EMA momentum.

Plain functions returning matplotlib Figures. Images are drawn with nearest-neighbour interpolation so the
pixel art (and the masks' pixel edges) stay visible.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rtmdet_lesson.ema import ema_momentum
from rtmdet_lesson.figures.sprites import instance_colors, overlay_instances
from rtmdet_lesson.schedule import lr_at


def samples_figure(samples: Sequence, titles: Sequence[str] | None = None, cell: float = 3.5) -> Figure:
    """Samples ``(image, target)`` side by side, each instance's mask filled and its box outlined.

    Chapter 07 uses it to show what each augmentation does to the image, the masks and the boxes.
    """
    if not samples:
        raise ValueError("samples_figure needs at least one (image, target) sample.")
    titles = titles or [""] * len(samples)
    fig, axes = plt.subplots(1, len(samples), figsize=(cell * len(samples), cell), squeeze=False)
    for ax, (image, target), title in zip(axes[0], samples, titles, strict=True):
        ax.imshow(overlay_instances(image, target["masks"]), interpolation="nearest")
        colors = instance_colors(len(target["labels"]))
        for (x1, y1, x2, y2), color in zip(target["boxes"].tolist(), colors, strict=True):
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec=color, lw=1))
        h, w = image.shape[-2:]
        ax.set_title(f"{title}\n{w}x{h}, {len(target['labels'])} objects".strip(), fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def before_after_figure(before, after, transform_name: str = "transform") -> Figure:
    """One sample before and after a transform (two ``(image, target)`` pairs). Chapter 07 builds this."""
    return samples_figure([before, after], ["before", f"after {transform_name}"])


def lr_schedule_figure(
    total_iters: int,
    flat_until_iter: int,
    base_lr: float = 0.004,
    warmup_iters: int = 1000,
    warmup_start_factor: float = 1e-5,
    min_lr_ratio: float = 0.05,
) -> Figure:
    """The learning rate over a run: linear warm-up, flat, cosine down to min_lr_ratio x base. Chapter 07."""
    its = np.arange(total_iters)
    kw = dict(
        flat_until_iter=flat_until_iter,
        total_iters=total_iters,
        warmup_iters=warmup_iters,
        warmup_start_factor=warmup_start_factor,
        min_lr_ratio=min_lr_ratio,
    )
    lrs = [lr_at(int(i), base_lr, **kw) for i in its]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(its, lrs)
    ax.axvline(min(warmup_iters, total_iters), ls=":", c="grey", label="end of warm-up")
    ax.axvline(flat_until_iter, ls="--", c="grey", label="cosine starts")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ema_momentum_figure(steps: int = 20000, momentum: float = 0.0002, gamma: float = 2000.0) -> Figure:
    """The EMA's weight m_t of the current model over the updates (log scale). Chapter 07 builds this."""
    its = np.arange(1, steps)
    ms = [ema_momentum(int(i), momentum, gamma) for i in its]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.semilogy(its, ms)
    ax.axhline(momentum, ls="--", c="grey", label=f"floor {momentum}")
    ax.set_xlabel("update (step)")
    ax.set_ylabel("m_t (weight of the model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
