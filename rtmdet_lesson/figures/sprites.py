"""Pictures of the sprites dataset for chapter 00: images with their instance masks, the five classes, counts
and object sizes.

Plain functions: arrays, tensors or datasets in, a matplotlib ``Figure`` (or an array) out. Images are shown
with nearest-neighbour interpolation so that the pixel art keeps its hard edges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rtmdet_lesson.data.sprites import SPRITE_CLASSES, draw_sprite
from rtmdet_lesson.figures.common import draw_box_labels, instance_colors, overlay_instances

__all__ = ["class_counts_figure", "instance_colors", "object_size_figure", "overlay_instances", "sample_grid_figure",
           "sprite_gallery_figure"]


def sample_grid_figure(samples: Sequence, class_names: Sequence[str], ncols: int = 4, cell: float = 3.2) -> Figure:
    """A grid of dataset items ``(image, target)`` with every instance's mask, box and class name drawn."""
    nrows = max(1, -(-len(samples) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, target) in zip(axes.flat, samples, strict=False):
        ax.imshow(overlay_instances(image, target["masks"]), interpolation="nearest")
        colors = instance_colors(len(target["labels"]))
        for (x1, y1, x2, y2), color in zip(target["boxes"].tolist(), colors, strict=True):
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec=color, lw=1))
        h, w = image.shape[-2:] if isinstance(image, torch.Tensor) else np.shape(image)[:2]
        names = [class_names[label] for label in target["labels"].tolist()]
        draw_box_labels(ax, target["boxes"], names, colors, (h, w), fontsize=7)
        ax.set_title(f"image {target['image_id']}: {w}x{h}, {len(target['labels'])} objects", fontsize=8)
    fig.tight_layout()
    return fig


def sprite_gallery_figure(per_class: int = 8, seed: int = 0) -> Figure:
    """Each class drawn ``per_class`` times at art resolution (before upscaling), one row per class."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(SPRITE_CLASSES), per_class, figsize=(1.1 * per_class, 1.2 * len(SPRITE_CLASSES)))
    for label, row in enumerate(axes):
        for ax in row:
            rgb, alpha = draw_sprite(label, rng)
            rgba = np.concatenate([rgb, alpha[..., None].astype(np.uint8) * 255], axis=2)  # (h, w, 4)
            ax.imshow(rgba, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(SPRITE_CLASSES[label], fontsize=9)
    fig.tight_layout()
    return fig


def _annotations(dataset) -> list[dict]:
    return [a for a in dataset.coco.dataset["annotations"] if not a.get("iscrowd", 0)]


def class_counts_figure(datasets: Mapping[str, object]) -> Figure:
    """Bars of instance counts per class, one bar group per split ({"train": ds, "val": ds})."""
    first = next(iter(datasets.values()))
    names = first.class_names
    fig, ax = plt.subplots(figsize=(6.5, 3))
    width = 0.8 / len(datasets)
    for k, (split, ds) in enumerate(datasets.items()):
        labels = [ds.category_id_to_label[a["category_id"]] for a in _annotations(ds)]
        counts = np.bincount(labels, minlength=len(names))
        ax.bar(np.arange(len(names)) + (k - (len(datasets) - 1) / 2) * width, counts, width, label=split)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("instances")
    ax.legend()
    ax.set_title("instances per class")
    fig.tight_layout()
    return fig


def object_size_figure(datasets: Mapping[str, object], strides: Sequence[int] = (8, 16, 32)) -> Figure:
    """Histograms of object size per split: sqrt(mask area) with COCO's small/medium limits (32, 96), and the
    box's short side with the prior strides (an object narrower than a stride may get no prior inside it)."""
    fig, (ax_area, ax_side) = plt.subplots(1, 2, figsize=(10, 3))
    bins = np.arange(0, 125, 4)
    for split, ds in datasets.items():
        anns = _annotations(ds)
        ax_area.hist([np.sqrt(a["area"]) for a in anns], bins=bins, alpha=0.6, label=split)
        ax_side.hist([min(a["bbox"][2], a["bbox"][3]) for a in anns], bins=bins, alpha=0.6, label=split)
    for x in (32, 96):
        ax_area.axvline(x, color="k", ls="--", lw=1)
    for s in strides:
        ax_side.axvline(s, color="k", ls=":", lw=1)
    ax_area.set_xlabel("sqrt(mask area) [px]   (dashed: COCO small | medium | large)")
    ax_side.set_xlabel(f"box short side [px]   (dotted: strides {', '.join(map(str, strides))})")
    for ax in (ax_area, ax_side):
        ax.set_ylabel("instances")
        ax.legend()
    fig.tight_layout()
    return fig
