"""Pictures for chapter 07: samples before/after augmentation, the learning-rate schedule, the EMA momentum, and
the augmentation widget's preview of training stage 1 under other mosaic, mixup and scale settings.

Plain functions returning matplotlib Figures. Images are drawn with nearest-neighbour interpolation so the
pixel art (and the masks' pixel edges) stay visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rtmdet_lesson.data import transforms as T
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


# ---------------------------------------------------------------------------------------------------------------
# The widget of chapter 07: stage 1 of the training pipeline under other settings
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class AugmentationPreview:
    """What ``augmentation_preview`` returns: the samples, what changed each, and the objects' sizes.

    ``samples``: ``count`` pairs (image uint8 (3, S, S), target) as training stage 1 gives them;
    ``changed_by``: per sample, which cached steps changed it ("mosaic + mixup", "mosaic", "mixup" or "neither");
    ``sizes``: (M,) float, sqrt(box area) in pixels of every object in ``samples``;
    ``source_sizes``: (N,) float, the same for the input images of those calls, letterboxed to the canvas (what
    evaluation shows the network).
    """

    samples: list
    changed_by: list[str]
    sizes: np.ndarray
    source_sizes: np.ndarray


def augmentation_pipeline(
    size: tuple[int, int] = (320, 320),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    mosaic: bool = True,
    mixup_prob: float = 0.5,
    recipe: str = "tiny",
) -> T.Compose:
    """Training stage 1 (mosaic -> random resize and crop -> HSV -> flip -> pad -> mixup -> filter) with the
    widget's settings; the caches' sizes and drop rule come from ``recipe`` (``T.REFERENCE_AUGMENT``).

    ``mixup_prob`` = 0 leaves mixup out. With the recipe's own ratio range and mixup probability this is
    ``T.build_train_pipeline(size, stage=1, recipe=recipe)``. Chapter 07's widget draws with it.
    """
    if not 0.0 <= mixup_prob <= 1.0:
        raise ValueError(f"mixup_prob must lie in [0, 1], got {mixup_prob}.")
    if recipe not in T.REFERENCE_AUGMENT:
        raise ValueError(f"Unknown recipe {recipe!r}; choose one of {sorted(T.REFERENCE_AUGMENT)}.")
    settings = T.REFERENCE_AUGMENT[recipe]
    size = tuple(size)
    steps = []
    if mosaic:
        steps.append(T.CachedMosaic(size, max_cached=settings["mosaic_max_cached"],
                                    random_pop=settings["mosaic_random_pop"]))
    scale = (2 * size[0], 2 * size[1]) if mosaic else size  # the resize fits the mosaic canvas, or the canvas
    steps += [T.RandomResizeCrop(scale, tuple(ratio_range), size), T.RandomHSV(), T.RandomFlip(0.5), T.Pad(size)]
    if mixup_prob > 0:
        steps.append(T.CachedMixUp(size, max_cached=settings["mixup_max_cached"],
                                   random_pop=settings["mixup_random_pop"], prob=mixup_prob))
    return T.Compose([*steps, T.FilterAnnotations((1, 1))])


def _box_sizes(target: dict) -> np.ndarray:
    """(G,) sqrt(w * h) of the target's boxes, in pixels."""
    boxes = target["boxes"].double()  # (G, 4) x1y1x2y2
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt().numpy()


def augmentation_preview(
    dataset: Sequence,
    count: int = 4,
    *,
    size: tuple[int, int] = (320, 320),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    mosaic: bool = True,
    mixup_prob: float = 0.5,
    seed: int = 0,
    recipe: str = "tiny",
) -> AugmentationPreview:
    """``count`` training samples of ``dataset`` (items ``(image, target)``) through ``augmentation_pipeline``.

    The seed picks the images (a random order of the dataset, repeated if it is short) and every random draw.
    The caches are filled first, as in a running epoch: the first 4 calls pass through mosaic (it mixes once its
    cache holds 5 samples) and are not shown, whatever the settings, so that one seed shows the same input
    images under every setting. Each step is called in turn so that the preview can tell whether mosaic and
    mixup changed a sample (a cached step that passes a sample through returns the same image). Chapter 07's
    widget draws this.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}.")
    if len(dataset) == 0:
        raise ValueError("augmentation_preview needs a dataset with at least one image.")
    pipeline = augmentation_pipeline(size, ratio_range, mosaic, mixup_prob, recipe)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset))
    warm = 4  # calls that fill the caches (mosaic needs 4 to mix from the 5th call on), whatever the settings
    samples, changed_by, sources = [], [], []
    for call in range(warm + count):
        image, target = dataset[int(order[call % len(dataset)])]
        T.check_sample(image, target)
        changed = []
        for step in pipeline.transforms:
            before = image
            image, target = step(image, target, rng)
            if isinstance(step, (T.CachedMosaic, T.CachedMixUp)) and image is not before:
                changed.append("mosaic" if isinstance(step, T.CachedMosaic) else "mixup")
        if call >= warm:
            samples.append((image, target))
            changed_by.append(" + ".join(changed) or "neither")
            sources.append(order[call % len(dataset)])
    source_sizes = [_box_sizes(T.letterbox_sample(*dataset[int(i)], tuple(size))[1]) for i in sources]
    return AugmentationPreview(samples, changed_by, np.concatenate([_box_sizes(t) for _, t in samples]),
                               np.concatenate(source_sizes))


def augmentation_figure(preview: AugmentationPreview, cell: float = 2.8) -> Figure:
    """The preview's samples side by side (masks filled, boxes outlined) and, last, a histogram of the objects'
    sizes in the samples against the same images letterboxed (as evaluation sees them). Chapter 07's widget."""
    n = len(preview.samples)
    fig, axes = plt.subplots(1, n + 1, figsize=(cell * (n + 1.3), cell), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * n + [1.3]})
    for ax, (image, target), changed in zip(axes[0, :n], preview.samples, preview.changed_by, strict=True):
        ax.imshow(overlay_instances(image, target["masks"]), interpolation="nearest")
        colors = instance_colors(len(target["labels"]))
        for (x1, y1, x2, y2), color in zip(target["boxes"].tolist(), colors, strict=True):
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec=color, lw=1))
        ax.set_title(f"{changed}\n{len(target['labels'])} objects", fontsize=9)
        ax.axis("off")
    ax = axes[0, -1]
    canvas = max(preview.samples[0][0].shape[-2:])
    bins = np.geomspace(4, canvas, 15)
    ax.hist(preview.source_sizes, bins=bins, histtype="step", color="grey", ls="--", lw=1.5, label="letterboxed inputs")
    ax.hist(preview.sizes, bins=bins, histtype="step", color="tab:blue", lw=1.5, label="augmented")
    ax.set_xscale("log")
    ax.set_xlabel("object size √(w·h), pixels", fontsize=8)
    ax.set_ylabel("objects", fontsize=8)
    ax.set_title("object sizes", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
