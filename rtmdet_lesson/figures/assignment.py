"""Pictures of the assignment for chapter 05: cost heat maps per level and the positives each object gets.

Plain functions: tensors in, a matplotlib ``Figure`` (or arrays) out. Chapter 05's widget only wires sliders
to :func:`assignment_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rtmdet_lesson.assigner import DynamicSoftLabelAssigner, assignment_costs
from rtmdet_lesson.figures.common import image_hwc as _image_hwc

LEVEL_MARKERS = {8: "o", 16: "s", 32: "D"}


def level_maps(values: torch.Tensor, feature_sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Split a per-prior vector (N,) into one (h, w) array per level (priors are row-major per level)."""
    out, start = [], 0
    for h, w in feature_sizes:
        out.append(values[start : start + h * w].detach().cpu().reshape(h, w).numpy())
        start += h * w
    return out


def cost_maps(
    cls_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    priors: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_centers: torch.Tensor | None,
    object_index: int,
    weights: tuple[float, float, float] = (1.0, 3.0, 1.0),
    alpha: float = 10.0,
    beta: float = 3.0,
) -> dict[str, torch.Tensor]:
    """Per-prior (N,) cost terms of one object, NaN on non-candidates: keys "cls", "iou", "center", "total".

    ``weights`` are (cls, iou, centre); the "iou" and "center" entries include their weights.
    """
    terms = assignment_costs(cls_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_centers, beta, alpha)
    w_cls, w_iou, w_center = weights
    columns = {
        "cls": w_cls * terms.cls[:, object_index],
        "iou": w_iou * terms.iou[:, object_index],
        "center": w_center * terms.center[:, object_index],
    }
    columns["total"] = columns["cls"] + columns["iou"] + columns["center"]
    out = {}
    for name, column in columns.items():
        full = torch.full((priors.shape[0],), float("nan"), dtype=column.dtype, device=column.device)
        out[name] = full.index_copy_(0, terms.candidates, column)  # (N,)
    return out


def draw_positives(ax, image, priors: torch.Tensor, gt_boxes: torch.Tensor, gt_index: torch.Tensor,
                   highlight: int | None = None) -> None:
    """The image with GT boxes and each positive prior as a dot in its object's colour (marker = level)."""
    ax.imshow(_image_hwc(image), interpolation="nearest")
    colors = plt.get_cmap("tab10").colors
    for j, (x1, y1, x2, y2) in enumerate(gt_boxes.tolist()):
        faded = highlight is not None and j != highlight
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1 if faded else 2,
                               color=colors[j % 10], alpha=0.35 if faded else 1))
    for j in range(len(gt_boxes)):
        if highlight is not None and j != highlight:
            continue
        pos = (gt_index == j).nonzero()[:, 0]
        for stride, marker in LEVEL_MARKERS.items():
            sel = pos[priors[pos, 2] == stride]
            ax.scatter(priors[sel, 0], priors[sel, 1], s=22 if highlight is None else 90, marker=marker,
                       color=colors[j % 10], edgecolors="white", linewidths=0.8 if highlight is None else 2)
    ax.set_axis_off()


def positives_figure(image, priors: torch.Tensor, gt_boxes: torch.Tensor, gt_index: torch.Tensor,
                     title: str = "positives (o stride 8, s 16, D 32)") -> Figure:
    """One panel: every object's positives in the object's colour."""
    fig, ax = plt.subplots(figsize=(6, 5))
    draw_positives(ax, image, priors, gt_boxes, gt_index)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def assignment_figure(
    image,
    cls_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    priors: torch.Tensor,
    feature_sizes: Sequence[tuple[int, int]],
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_centers: torch.Tensor | None = None,
    object_index: int = 0,
    cls_weight: float = 1.0,
    iou_weight: float = 3.0,
    center_weight: float = 1.0,
    alpha: float = 10.0,
    beta: float = 3.0,
    topk: int = 13,
    span_decades: float = 3.0,
) -> Figure:
    """Cost heat maps of one object per level and the positives chosen with these settings. Chapter 05.

    One image: cls_logits (N, C), pred_boxes (N, 4), priors (N, 4), gt_boxes (G, 4), gt_labels (G,),
    gt_centers (G, 2) or None. Rows: the weighted cls, IoU and centre costs and their total (log10 colour scale
    clipped to ``span_decades`` above each row's lowest cost; blank where a prior is not a candidate; the red
    box is the object); columns: the three levels. The left column shows the image with
    the object's positives (all objects compete, so conflicts are resolved as in training).
    """
    weights = (cls_weight, iou_weight, center_weight)
    maps = cost_maps(cls_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_centers, object_index, weights,
                     alpha, beta)
    assigner = DynamicSoftLabelAssigner(topk=topk, iou_weight=iou_weight, soft_center_radius=beta,
                                        cls_weight=cls_weight, center_weight=center_weight, center_base=alpha)
    valid = torch.ones(1, len(gt_boxes), dtype=torch.bool)
    result = assigner(cls_logits[None], pred_boxes[None], priors, gt_boxes[None], gt_labels[None], valid,
                      None if gt_centers is None else gt_centers[None])
    gt_index = result.gt_index[0]

    fig = plt.figure(figsize=(13, 9))
    grid = fig.add_gridspec(4, 4, width_ratios=[1.6, 1, 1, 1])
    ax = fig.add_subplot(grid[:, 0])
    draw_positives(ax, image, priors, gt_boxes, gt_index, highlight=object_index)
    num = int((gt_index == object_index).sum())
    ax.set_title(f"object {object_index}: {num} positive(s)\n(o stride 8, s 16, D 32)", fontsize=9)
    strides = sorted({int(s) for s in priors[:, 2].tolist()})
    x1, y1, x2, y2 = gt_boxes[object_index].tolist()
    for row, name in enumerate(["cls", "iou", "center", "total"]):
        per_level = level_maps(maps[name], feature_sizes)
        finite = np.concatenate([m[np.isfinite(m)].ravel() for m in per_level])
        logs = np.log10(np.clip(finite, 1e-6, None)) if finite.size else np.zeros(1)
        vmin = float(logs.min())
        vmax = min(float(logs.max()), vmin + span_decades) if logs.max() > vmin else vmin + 1e-3
        for col, (values, stride) in enumerate(zip(per_level, strides, strict=True)):
            axc = fig.add_subplot(grid[row, col + 1])
            h, w = values.shape
            extent = (-stride / 2, (w - 0.5) * stride, (h - 0.5) * stride, -stride / 2)  # cells centred on priors
            im = axc.imshow(np.log10(np.clip(values, 1e-6, None)), cmap="viridis_r", vmin=vmin, vmax=vmax,
                            interpolation="nearest", extent=extent)
            axc.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1, color="red"))
            axc.set_xticks([])
            axc.set_yticks([])
            if row == 0:
                axc.set_title(f"stride {stride}", fontsize=9)
            if col == 0:
                axc.set_ylabel(f"{name} cost", fontsize=9)
        fig.colorbar(im, ax=axc, fraction=0.046, pad=0.02, label="log10 (clipped)")
    fig.suptitle(f"weights cls {cls_weight:g} / IoU {iou_weight:g} / centre {center_weight:g}, "
                 f"centre prior {alpha:g}^(d/s - {beta:g}), top-k {topk}", fontsize=10)
    fig.tight_layout()
    return fig
