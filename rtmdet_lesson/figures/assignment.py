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
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

from rtmdet_lesson.assigner import DynamicSoftLabelAssigner, assignment_costs
from rtmdet_lesson.figures.common import image_hwc as _image_hwc

LEVEL_MARKERS = {8: "o", 16: "s", 32: "D"}  # the marker of each level's positives
COST_FLOOR = 1e-6  # costs below this count as this on the log colour scale


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


def level_legend(ax, size: float = 6.0, **kwargs):
    """A legend of the marker shapes that tell the levels apart (drawn as the markers themselves)."""
    handles = [Line2D([], [], linestyle="none", marker=marker, markersize=size, markerfacecolor="0.55",
                      markeredgecolor="black", label=f"stride {stride}") for stride, marker in LEVEL_MARKERS.items()]
    return ax.legend(handles=handles, **kwargs)


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
            ax.scatter(priors[sel, 0], priors[sel, 1], s=22 if highlight is None else 70, marker=marker,
                       color=colors[j % 10], edgecolors="white", linewidths=0.8 if highlight is None else 1.5)
    ax.set_axis_off()


def positives_figure(image, priors: torch.Tensor, gt_boxes: torch.Tensor, gt_index: torch.Tensor,
                     title: str = "the positives of every object, in its colour") -> Figure:
    """One panel: every object's positives in the object's colour; the legend names the levels' markers."""
    fig, ax = plt.subplots(figsize=(6, 5))
    draw_positives(ax, image, priors, gt_boxes, gt_index)
    ax.set_title(title, fontsize=9)
    level_legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="marker", title_fontsize=8)
    fig.tight_layout()
    return fig


def colour_limits(values: Sequence[np.ndarray], span_decades: float = 3.0) -> tuple[float, float]:
    """The log10 colour range of one cost term: from its lowest cost to ``span_decades`` above it.

    ``values`` are the term's per-level maps (NaN where a prior is not a candidate); costs below 1e-6 count as
    1e-6. A term that is the same everywhere (a weight of 0 makes it 0) gets one decade around its value, so
    that the colour bar shows whole decades instead of ticks like -0.0002 with an offset label.
    """
    finite = np.concatenate([np.asarray(m)[np.isfinite(m)].ravel() for m in values])
    if finite.size == 0:
        return -1.0, 0.0
    logs = np.log10(np.clip(finite, COST_FLOOR, None))
    low, high = float(logs.min()), float(logs.max())
    if high - low < 1e-6:
        return low - 0.5, low + 0.5
    return low, min(high, low + span_decades)


def _decade_label(value: float, _position=None) -> str:
    return f"$10^{{{value:g}}}$" if float(value).is_integer() else f"$10^{{{value:.1f}}}$"


def _colour_bar(fig: Figure, image, ax, constant: float | None = None):
    """A colour bar right of ``ax``, in powers of ten, whose ends say which colour is cheap (bottom) and which is
    costly (top). ``constant``: the log10 value of a term that is the same everywhere, shown as one tick."""
    bar = fig.colorbar(image, cax=ax.inset_axes([1.08, 0.0, 0.08, 1.0]))
    low, high = image.get_clim()
    if constant is not None:
        bar.set_ticks([constant])
        bar.set_ticklabels(["0" if constant <= np.log10(COST_FLOOR) else _decade_label(constant)])
    else:
        ticks = np.arange(np.ceil(low), np.floor(high) + 1)
        if len(ticks) < 2:  # less than a decade: the two ends
            ticks = np.array([low, high])
        bar.set_ticks(ticks)
        bar.ax.yaxis.set_major_formatter(FuncFormatter(_decade_label))
    bar.ax.tick_params(labelsize=7)
    bar.ax.set_title("costly", fontsize=7)
    bar.ax.set_xlabel("cheap", fontsize=7)
    return bar


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
    gt_centers (G, 2) or None. Left: the image with the object's positives (all objects compete, so conflicts
    are resolved as in training; the marker shape is the level). Right, a 2 x 2 grid of cost terms (the
    weighted cls, IoU and centre costs and their total), each a strip of the three levels side by side with
    one colour bar: log10 scale from the term's lowest cost to ``span_decades`` above it, light = cheap, dark =
    costly, blank where a prior is not a candidate; the red box is the object. Wide rather than tall, so that
    it fits a laptop screen (about 1200 x 480 px) together with the sliders of chapter 05's widget.
    """
    weights = (cls_weight, iou_weight, center_weight)
    maps = cost_maps(cls_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_centers, object_index, weights,
                     alpha, beta)
    assigner = DynamicSoftLabelAssigner(topk=topk, iou_weight=iou_weight, soft_center_radius=beta,
                                        cls_weight=cls_weight, center_weight=center_weight, center_base=alpha)
    valid = torch.ones(1, len(gt_boxes), dtype=torch.bool, device=gt_boxes.device)
    result = assigner(cls_logits[None], pred_boxes[None], priors, gt_boxes[None], gt_labels[None], valid,
                      None if gt_centers is None else gt_centers[None])
    gt_index = result.gt_index[0].cpu()
    priors = priors.cpu()

    fig = plt.figure(figsize=(12, 4.0))
    levels = len(feature_sizes)
    # columns: the image, then two blocks of `levels` maps, each followed by room for its colour bar
    block = [1] * levels + [0.5]
    grid = fig.add_gridspec(2, 1 + 2 * len(block), width_ratios=[2.6] + block * 2, wspace=0.08, hspace=0.3,
                            left=0.01, right=0.97, top=0.87, bottom=0.06)
    ax = fig.add_subplot(grid[:, 0])
    draw_positives(ax, image, priors, gt_boxes.cpu(), gt_index, highlight=object_index)
    num = int((gt_index == object_index).sum())
    ax.set_title(f"object {object_index}: {num} positive(s)", fontsize=9)
    level_legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=levels, fontsize=7, frameon=False,
                 handletextpad=0.2, columnspacing=0.8)
    strides = sorted({int(s) for s in priors[:, 2].tolist()})
    x1, y1, x2, y2 = gt_boxes[object_index].tolist()
    titles = {"cls": f"classification cost × {cls_weight:g}", "iou": f"IoU cost × {iou_weight:g}",
              "center": f"centre prior × {center_weight:g}", "total": "total cost (what is ranked)"}
    for index, name in enumerate(["cls", "iou", "center", "total"]):
        row, first = index // 2, 1 + (index % 2) * len(block)
        per_level = level_maps(maps[name], feature_sizes)
        vmin, vmax = colour_limits(per_level, span_decades)
        finite = np.concatenate([m[np.isfinite(m)].ravel() for m in per_level])
        constant = None
        if finite.size and finite.max() == finite.min():  # e.g. a weight of 0: the term is 0 everywhere
            constant = float(np.log10(max(finite[0], COST_FLOOR)))
        for col, (values, stride) in enumerate(zip(per_level, strides, strict=True)):
            axc = fig.add_subplot(grid[row, first + col])
            h, w = values.shape
            extent = (-stride / 2, (w - 0.5) * stride, (h - 0.5) * stride, -stride / 2)  # cells centred on priors
            im = axc.imshow(np.log10(np.clip(values, COST_FLOOR, None)), cmap="viridis_r", vmin=vmin, vmax=vmax,
                            interpolation="nearest", extent=extent)
            axc.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1, color="red"))
            axc.set_xticks([])
            axc.set_yticks([])
            axc.set_xlabel(f"stride {stride}", fontsize=7, labelpad=2)
            if col == levels // 2:
                axc.set_title(titles[name], fontsize=9)
        _colour_bar(fig, im, axc, constant)
    fig.suptitle(f"weights cls {cls_weight:g} / IoU {iou_weight:g} / centre {center_weight:g}; "
                 f"centre prior {alpha:g}^(d/s - {beta:g}); top-k {topk}", fontsize=10)
    return fig
