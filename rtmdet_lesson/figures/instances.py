"""Pictures of predicted instances and of the mask-decoding stages of one instance (chapter 08)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rtmdet_lesson.dynamic_mask import split_dynamic_params
from rtmdet_lesson.figures.common import draw_box_labels, image_hwc, instance_colors, mask_outline, overlay_instances
from rtmdet_lesson.nms import batched_nms
from rtmdet_lesson.postprocess import Instances, mask_logits_to_original
from rtmdet_lesson.priors import grid_priors, relative_coordinates


def draw_instances(
    image,
    instances: Instances,
    class_names: list[str] | None = None,
    score_thr: float = 0.0,
    alpha: float = 0.45,
    ax=None,
    title: str | None = None,
    fontsize: float = 7,
) -> Figure:
    """One image with its instances: translucent masks with outlines, boxes and "name score" labels.

    Pixels are shown with nearest-neighbour interpolation so pixel art stays crisp. Instances with
    score <= ``score_thr`` are left out. Labels are placed by ``common.place_labels``: on a crowded image a
    label that would cover a better instance's label moves (inside its box, below it, or further down).
    Returns the figure (a new one unless ``ax`` is given).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 6))
    else:
        fig = ax.figure
    shown = (instances.scores > score_thr).cpu().numpy()  # (K,)
    colors = instance_colors(len(instances))[shown]
    masks = instances.masks.cpu()[torch.from_numpy(shown)] if instances.masks is not None else None
    rgb = image_hwc(image)  # (H, W, 3)
    ax.imshow(rgb if masks is None else overlay_instances(rgb, masks, alpha, colors), interpolation="nearest")
    boxes = instances.boxes.cpu()[torch.from_numpy(shown)]  # (K', 4)
    texts = []
    for (x1, y1, x2, y2), score, label, color in zip(boxes.tolist(), instances.scores.cpu()[shown].tolist(),
                                                      instances.labels.cpu()[shown].tolist(), colors, strict=True):
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
        name = class_names[label] if class_names is not None and label < len(class_names) else str(label)
        texts.append(f"{name} {score:.2f}")
    order = np.argsort(-instances.scores.cpu()[shown].numpy(), kind="stable")  # best first keeps its place
    draw_box_labels(ax, boxes[order], [texts[i] for i in order], colors[order], rgb.shape[:2], fontsize=fontsize)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return fig


def mask_decoding_stages(outputs, instances: Instances, k: int, image_index: int = 0,
                         strides: tuple[int, ...] = (8, 16, 32)) -> dict[str, np.ndarray]:
    """Every intermediate of the dynamic mask head for kept instance ``k`` of image ``image_index``.

    Returns arrays: ``prototypes`` (8, h, w), ``relative_coords`` (2, h, w) [x, y], ``layer0`` and ``layer1``
    (8, h, w) after their ReLU, ``logit`` (h, w) at stride 8, ``upsampled`` (CH, CW) sigmoid on the canvas,
    ``mask`` (H0, W0) bool on the original image, ``kernel`` (169,), ``prior`` (4,) (x, y, stride, stride).
    """
    if instances.prior_index is None or not 0 <= k < len(instances):
        raise ValueError(f"k must index one of the {len(instances)} kept instances (0..{len(instances) - 1})")
    sizes = [tuple(s.shape[-2:]) for s in outputs.cls_scores]
    feats = outputs.mask_feats[image_index].float()  # (8, h, w)
    priors = grid_priors(sizes, strides, device=feats.device)  # (N, 4)
    kernels = torch.cat([p[image_index].permute(1, 2, 0).reshape(-1, p.shape[1]) for p in outputs.kernel_preds])
    n = int(instances.prior_index[k])
    kernel, prior = kernels[n].float(), priors[n]  # (169,), (4,)
    h, w = feats.shape[-2:]
    coords = relative_coordinates(prior[None, :2], prior[None, 2], (h, w))[0]  # (2, h, w)
    weights, biases = split_dynamic_params(kernel[None])
    x = torch.cat([coords, feats]).reshape(10, h * w)  # (10, h*w)
    layers = []
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        x = weight[0] @ x + bias[0][:, None]  # (out, h*w): a 1x1 conv is a matrix product
        if i < 2:
            x = x.relu()
            layers.append(x.reshape(-1, h, w))
    logit = x.reshape(h, w)
    upsampled = F.interpolate(logit[None, None], scale_factor=strides[0], mode="bilinear", align_corners=False)[0, 0]
    mask = mask_logits_to_original(logit[None], instances.letterbox, strides[0])[0].sigmoid() > 0.5

    def arr(t):
        return t.detach().cpu().numpy()

    return {"prototypes": arr(feats), "relative_coords": arr(coords), "layer0": arr(layers[0]),
            "layer1": arr(layers[1]), "logit": arr(logit), "upsampled": arr(upsampled.sigmoid()),
            "mask": arr(mask), "kernel": arr(kernel), "prior": arr(prior)}


def plot_mask_decoding_stages(stages: dict[str, np.ndarray], image=None, title: str | None = None) -> Figure:
    """``mask_decoding_stages`` as one figure, in the order the data flows.

    Three rows of eight small panels: the prototypes, then the outputs of dynamic layers 0 and 1 (after their
    ReLU). A row of four: the relative coordinates x and y (the prior marked), the stride-8 logit and the
    sigmoid after bilinear x8. A row of two large panels: the mask > 0.5 on the original ``image`` (black if
    ``None``) and a zoom on it (its box with a margin of a quarter of its size).
    """
    fig = plt.figure(figsize=(14, 13))
    grid = fig.add_gridspec(5, 24, height_ratios=[1, 1, 1, 1.7, 3.2])
    rows = (("prototypes", "prototype", "coolwarm"), ("layer0", "layer 0 ch", "magma"),
            ("layer1", "layer 1 ch", "magma"))
    for r, (key, name, cmap) in enumerate(rows):
        for c in range(8):
            ax = fig.add_subplot(grid[r, 3 * c : 3 * c + 3])
            ax.imshow(stages[key][c], cmap=cmap, interpolation="nearest")
            ax.set_title(f"{name} {c}", fontsize=8)
            ax.set_axis_off()
    bottom = [fig.add_subplot(grid[3, 6 * c : 6 * c + 6]) for c in range(4)]
    bottom += [fig.add_subplot(grid[4, :12]), fig.add_subplot(grid[4, 12:])]
    for ax in bottom:
        ax.set_axis_off()
    x, y, s = stages["prior"][:3]
    for ax, c, name in ((bottom[0], 0, "rel x"), (bottom[1], 1, "rel y")):
        ax.imshow(stages["relative_coords"][c], cmap="coolwarm", interpolation="nearest")
        ax.plot([x / 8], [y / 8], "k+", markersize=10)
        ax.set_title(f"{name} (prior {x:.0f},{y:.0f} s{s:.0f})", fontsize=9)
    bottom[2].imshow(stages["logit"], cmap="coolwarm", interpolation="nearest")
    bottom[2].set_title("logit, stride 8", fontsize=9)
    bottom[3].imshow(stages["upsampled"], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    bottom[3].set_title("sigmoid, x8 bilinear (canvas)", fontsize=9)
    mask = stages["mask"]
    background = np.zeros((*mask.shape, 3), np.uint8) if image is None else image_hwc(image)
    shown = background.astype(np.float32) / 255
    shown[mask] = 0.35 * shown[mask] + 0.65 * np.array([1.0, 0.15, 0.15])
    shown[mask_outline(mask)] = [1.0, 1.0, 0.0]
    bottom[4].imshow(shown, interpolation="nearest")
    bottom[4].set_title("mask > 0.5, original image", fontsize=9)
    if mask.any():
        ys, xs = np.nonzero(mask)
        my, mx = (ys.max() - ys.min()) // 4 + 4, (xs.max() - xs.min()) // 4 + 4
        y0, x0 = max(ys.min() - my, 0), max(xs.min() - mx, 0)
        bottom[5].imshow(shown[y0 : ys.max() + my + 1, x0 : xs.max() + mx + 1], interpolation="nearest")
        bottom[5].set_title("mask, zoomed", fontsize=9)
    else:
        bottom[5].text(0.5, 0.5, "empty mask:\nno pixel above 0.5", ha="center", va="center", fontsize=9,
                       transform=bottom[5].transAxes)
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def nms_survivors(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, score_thr: float,
                  iou_thr: float, max_keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which candidates pass ``score > score_thr``, and which of those survive class-aware NMS at ``iou_thr``.

    Args:
        boxes: ``(M, 4)`` x1y1x2y2; scores, labels: ``(M,)``: one image's candidates (chapter 08, section 2).

    Returns:
        ``(above, kept)``: indices into the inputs, int64. ``above`` (A,): the candidates over the threshold,
        best first; ``kept`` (K,): those ``batched_nms`` keeps, best first, at most ``max_keep``.
    """
    above = torch.nonzero(scores > score_thr).flatten()
    above = above[torch.sort(scores[above], descending=True, stable=True).indices]  # (A,) best first
    kept = above[batched_nms(boxes[above], scores[above], labels[above], iou_thr, max_keep)]  # (K,)
    return above, kept


def nms_figure(image, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, class_names: list[str],
               score_thr: float = 0.05, iou_thr: float = 0.6, max_keep: int = 100, labelled: int = 12) -> Figure:
    """Candidates over ``score_thr`` (left) and the survivors of NMS at ``iou_thr`` (right, at most ``max_keep``
    drawn), one colour per class with a legend; the ``labelled`` best survivors carry "name score". The
    widget of chapter 08 wires its sliders to this."""
    above, survivors = nms_survivors(boxes, scores, labels, score_thr, iou_thr)
    kept = survivors[:max_keep]  # max_per_img: the best max_keep survivors
    capped = f"; the best {max_keep} are kept" if len(survivors) > max_keep else ""
    rgb = image_hwc(image)
    class_colors = instance_colors(len(class_names))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    panels = ((axes[0], above, f"{len(above)} candidates with score > {score_thr:.2f}"),
              (axes[1], kept, f"{len(survivors)} survive NMS at IoU > {iou_thr:.2f}{capped}"))
    for ax, index, title in panels:
        ax.imshow(rgb, interpolation="nearest")
        for (x1, y1, x2, y2), label in zip(boxes[index].tolist(), labels[index].tolist(), strict=True):
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1,
                                   edgecolor=class_colors[label]))
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    best = kept[:labelled]
    texts = [f"{class_names[int(labels[i])]} {float(scores[i]):.2f}" for i in best]
    draw_box_labels(axes[1], boxes[best], texts, class_colors[labels[best].cpu().numpy()], rgb.shape[:2], fontsize=6)
    handles = [Rectangle((0, 0), 1, 1, facecolor="none", edgecolor=c, lw=2) for c in class_colors]
    fig.legend(handles, class_names, loc="lower center", ncol=len(class_names), fontsize=9, frameon=False,
               title="box colour = class")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig
