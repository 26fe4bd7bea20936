"""Pictures of predicted instances and of the mask-decoding stages of one instance (chapter 08)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rtmdet_lesson.dynamic_mask import split_dynamic_params
from rtmdet_lesson.postprocess import Instances, mask_logits_to_original
from rtmdet_lesson.predict import to_rgb_tensor
from rtmdet_lesson.priors import grid_priors, relative_coordinates


def instance_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1], ``(n, 3)``, cycling through matplotlib's tab10."""
    return np.array([plt.get_cmap("tab10")(i % 10)[:3] for i in range(n)]).reshape(n, 3)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a bool mask ``(H, W)`` that touch a pixel outside it (4-neighbourhood)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay_instances(image, instances: Instances, score_thr: float = 0.0, alpha: float = 0.45) -> np.ndarray:
    """The image ``(H, W, 3)`` uint8 with each instance's mask filled translucently and outlined in its colour."""
    out = to_rgb_tensor(image).permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255  # (H, W, 3)
    if instances.masks is None:
        return (out * 255).round().astype(np.uint8)
    masks = instances.masks.cpu().numpy()
    keep = instances.scores.cpu().numpy() > score_thr
    for mask, color, show in zip(masks, instance_colors(len(masks)), keep, strict=True):
        if not show:
            continue
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        out[_outline(mask)] = color
    return (out * 255).round().astype(np.uint8)


def draw_instances(
    image,
    instances: Instances,
    class_names: list[str] | None = None,
    score_thr: float = 0.0,
    alpha: float = 0.45,
    ax=None,
    title: str | None = None,
) -> Figure:
    """One image with its instances: translucent masks with outlines, boxes and "name score" labels.

    Pixels are shown with nearest-neighbour interpolation so pixel art stays crisp. Instances with
    score <= ``score_thr`` are left out. Returns the figure (a new one unless ``ax`` is given).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 6))
    else:
        fig = ax.figure
    ax.imshow(overlay_instances(image, instances, score_thr, alpha), interpolation="nearest")
    colors = instance_colors(len(instances))
    for box, score, label, color in zip(instances.boxes.tolist(), instances.scores.tolist(),
                                        instances.labels.tolist(), colors, strict=True):
        if score <= score_thr:
            continue
        x1, y1, x2, y2 = box
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
        name = class_names[label] if class_names is not None and label < len(class_names) else str(label)
        ax.text(x1 - 0.5, y1 - 1.5, f"{name} {score:.2f}", color="white", fontsize=8, va="bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1.0, "alpha": 0.85})
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
    """A 4 x 8 grid of ``mask_decoding_stages``: prototypes; coordinates, logit, upsampled, mask (and a zoom on
    it); layers 0 and 1. ``image`` (the original) is drawn under the mask."""
    fig, axes = plt.subplots(4, 8, figsize=(14, 7.5))
    for ax in axes.flat:
        ax.set_axis_off()
    for c in range(8):
        axes[0, c].imshow(stages["prototypes"][c], cmap="coolwarm", interpolation="nearest")
        axes[0, c].set_title(f"prototype {c}", fontsize=8)
        axes[2, c].imshow(stages["layer0"][c], cmap="magma", interpolation="nearest")
        axes[2, c].set_title(f"layer 0 ch {c}", fontsize=8)
        axes[3, c].imshow(stages["layer1"][c], cmap="magma", interpolation="nearest")
        axes[3, c].set_title(f"layer 1 ch {c}", fontsize=8)
    x, y, s = stages["prior"][:3]
    for c, name in enumerate(["rel x", "rel y"]):
        axes[1, c].imshow(stages["relative_coords"][c], cmap="coolwarm", interpolation="nearest")
        axes[1, c].plot([x / 8], [y / 8], "k+", markersize=8)
        axes[1, c].set_title(f"{name} (prior {x:.0f},{y:.0f} s{s:.0f})", fontsize=8)
    axes[1, 2].imshow(stages["logit"], cmap="coolwarm", interpolation="nearest")
    axes[1, 2].set_title("logit, stride 8", fontsize=8)
    axes[1, 3].imshow(stages["upsampled"], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1, 3].set_title("sigmoid, x8 bilinear", fontsize=8)
    background = np.zeros((*stages["mask"].shape, 3), np.uint8) if image is None else \
        to_rgb_tensor(image).permute(1, 2, 0).cpu().numpy()
    mask = stages["mask"]
    shown = background.astype(np.float32) / 255
    shown[mask] = 0.35 * shown[mask] + 0.65 * np.array([1.0, 0.15, 0.15])
    shown[_outline(mask)] = [1.0, 1.0, 0.0]
    axes[1, 4].imshow(shown, interpolation="nearest")
    axes[1, 4].set_title("mask > 0.5, original", fontsize=8)
    if mask.any():  # a zoom on the mask, with a margin of a quarter of its size
        ys, xs = np.nonzero(mask)
        my, mx = (ys.max() - ys.min()) // 4 + 4, (xs.max() - xs.min()) // 4 + 4
        y0, x0 = max(ys.min() - my, 0), max(xs.min() - mx, 0)
        zoom = axes[1, 5].get_gridspec()[1, 5:8]
        axes[1, 5].set_subplotspec(zoom)
        axes[1, 5].imshow(shown[y0 : ys.max() + my + 1, x0 : xs.max() + mx + 1], interpolation="nearest")
        axes[1, 5].set_title("mask, zoomed", fontsize=8)
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
