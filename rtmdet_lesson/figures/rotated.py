"""Pictures of rotated boxes: detections on an image, and two boxes with their intersection (chapter 10)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from rtmdet_lesson.figures.common import image_hwc, instance_colors
from rtmdet_lesson.rotated.geometry import rbox_to_corners
from rtmdet_lesson.rotated.iou import rotated_iou


def draw_rotated(image, rboxes: torch.Tensor, labels=None, scores=None, class_names=None, ax=None,
                 title: str | None = None, score_thr: float = 0.0) -> Figure:
    """One image with rotated boxes (K, 5) outlined in their class's colour, labelled "name score".

    ``labels`` and ``scores`` (K,) are optional (ground truth has no scores). Boxes with a score <= ``score_thr``
    are left out. Returns the figure (a new one unless ``ax`` is given).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 6))
    else:
        fig = ax.figure
    rgb = image_hwc(image)  # (H, W, 3)
    ax.imshow(rgb, interpolation="nearest")
    rboxes = torch.as_tensor(rboxes).detach().cpu().double().reshape(-1, 5)
    k = len(rboxes)
    labels = torch.zeros(k, dtype=torch.int64) if labels is None else torch.as_tensor(labels).cpu()
    colors = instance_colors(max(10, int(labels.max()) + 1 if k else 1))
    corners = rbox_to_corners(rboxes).numpy()  # (K, 4, 2)
    for i in range(k):
        score = None if scores is None else float(scores[i])
        if score is not None and score <= score_thr:
            continue
        color = colors[int(labels[i]) % len(colors)]
        ax.add_patch(Polygon(corners[i], closed=True, fill=False, edgecolor=color, linewidth=1.5))
        front = corners[i, :2].mean(axis=0)  # middle of the first h side: which way w points
        ax.plot([rboxes[i, 0], front[0]], [rboxes[i, 1], front[1]], color=color, linewidth=1)
        name = class_names[int(labels[i])] if class_names else str(int(labels[i]))
        text = name if score is None else f"{name} {score:.2f}"
        top = corners[i][np.argmin(corners[i, :, 1])]
        ax.text(top[0], top[1] - 2, text, color="white", fontsize=7, va="bottom",
                bbox=dict(facecolor=color, alpha=0.8, pad=1, linewidth=0))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def intersection_polygon(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """The corners (P, 2) of the intersection of two rotated boxes (5,), in order round it (P = 0 if apart).

    A plain Sutherland-Hodgman clip of a's rectangle by b's four edges, one box pair at a time, for drawing; the
    batched, differentiable computation is ``rotated.iou``.
    """
    polygon = [tuple(p) for p in rbox_to_corners(a.double()[None])[0].tolist()]
    clip = rbox_to_corners(b.double()[None])[0].tolist()
    # the corners go round the same way for every box; orient the clip test by the clip polygon's signed area
    area2 = sum(clip[i][0] * clip[i - 3][1] - clip[i - 3][0] * clip[i][1] for i in range(4))
    sign = 1.0 if area2 >= 0 else -1.0
    for i in range(4):
        p, q = clip[i], clip[(i + 1) % 4]

        def side(v, p=p, q=q):  # > 0 inside (left of p->q for a counter-clockwise clip polygon)
            return sign * ((q[0] - p[0]) * (v[1] - p[1]) - (q[1] - p[1]) * (v[0] - p[0]))

        kept = []
        for j, current in enumerate(polygon):
            previous = polygon[j - 1]
            s_cur, s_prev = side(current), side(previous)
            if (s_cur >= 0) != (s_prev >= 0):  # the edge previous -> current crosses the clip line
                t = s_prev / (s_prev - s_cur)
                kept.append(tuple(u + t * (v - u) for u, v in zip(previous, current, strict=True)))
            if s_cur >= 0:
                kept.append(current)
        polygon = kept
        if not polygon:
            break
    return np.array(polygon, dtype=np.float64).reshape(-1, 2)


def rotated_iou_figure(angle_a: float = 20.0, angle_b: float = -30.0, shift: float = 10.0,
                       box_a=(0.0, 0.0, 60.0, 24.0), box_b=(0.0, 0.0, 50.0, 30.0)) -> Figure:
    """Two rotated boxes, their intersection polygon filled, and the IoU in the title (the chapter's widget).

    ``angle_a`` and ``angle_b`` in degrees replace the boxes' angles; ``shift`` moves box b to the right.
    The title's IoU is ``rotated.rotated_iou``; the shaded polygon is ``intersection_polygon``.
    """
    a = torch.tensor([*box_a[:4], math.radians(angle_a)], dtype=torch.float64)
    b = torch.tensor([box_b[0] + shift, *box_b[1:4], math.radians(angle_b)], dtype=torch.float64)
    iou = float(rotated_iou(a[None], b[None], aligned=True)[0])
    inter = intersection_polygon(a, b)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for box, color, name in ((a, "tab:blue", "a"), (b, "tab:orange", "b")):
        ax.add_patch(Polygon(rbox_to_corners(box[None])[0].numpy(), closed=True, fill=False, edgecolor=color,
                             linewidth=2, label=name))
    if len(inter) >= 3:
        ax.add_patch(Polygon(inter, closed=True, facecolor="tab:green", alpha=0.5, label="a ∩ b"))
        ax.plot(inter[:, 0], inter[:, 1], "k.", markersize=6)
    ax.set_xlim(-60, 70)
    ax.set_ylim(50, -50)  # image coordinates: y points down
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"IoU = {iou:.3f} ({len(inter)} corners)")
    return fig
