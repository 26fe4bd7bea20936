"""Pictures for the network chapters 01-04: receptive fields, feature maps, neck paths, box coding, priors.

Every function is plain: tensors or arrays in, a matplotlib ``Figure`` (or arrays) out. The widgets of
chapter 04 wire sliders to ``prior_coordinates_figure``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle
from torch import nn

from rtmdet_lesson.figures.common import image_hwc as _image_hwc

STRIDES = (8, 16, 32)


# ---------------------------------------------------------------------------------------------------------
# Chapter 01: effective receptive field


def effective_receptive_field(
    net: nn.Module, in_channels: int, size: int = 64, batch: int = 4, seed: int = 0
) -> np.ndarray:
    """How strongly each input pixel moves the centre output of ``net``: |d out[centre] / d input|.

    Chapter 01 uses it to compare stacks of blocks with 3x3 and 5x5 depthwise convs. ``net`` maps
    (B, in_channels, size, size) to (B, C', size', size') (stride 1 or not); the centre output pixel is
    summed over channels and the gradient is averaged over ``batch`` seeded random inputs, then summed
    over input channels and scaled so the maximum is 1. The net is put in eval mode. Returns (size, size).
    """
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.randn(batch, in_channels, size, size, generator=gen).to(device=device, dtype=dtype)
    x.requires_grad_(True)
    out = net(x)  # (B, C', h, w)
    h, w = out.shape[-2:]
    out[:, :, h // 2, w // 2].sum().backward()
    grad = x.grad.abs().sum(dim=(0, 1))  # (size, size)
    return (grad / grad.max().clamp_min(1e-12)).cpu().numpy()


def receptive_field_radius(erf: np.ndarray, mass: float = 0.95) -> int:
    """Smallest half-width r such that the centred (2r+1)^2 square holds ``mass`` of the ERF's total."""
    h, w = erf.shape
    cy, cx = h // 2, w // 2
    erf = erf.astype(np.float64)
    target = mass * erf.sum() * (1 - 1e-9)  # the tolerance absorbs summation-order rounding at mass = 1
    for r in range(max(h, w)):
        if erf[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1].sum() >= target:
            return r
    return max(h, w)


def plot_receptive_fields(maps: dict[str, np.ndarray], log: bool = False) -> Figure:
    """One panel per named ERF map (as returned by ``effective_receptive_field``) plus a centre-row profile.

    With ``log`` the panels show log10 of the map (floored at 1e-4), so the faint edge of the field shows.
    """
    n = len(maps)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.2 * (n + 1), 3.2))
    for ax, (name, erf) in zip(axes, maps.items(), strict=False):
        shown = np.log10(np.maximum(erf, 1e-4)) if log else erf
        ax.imshow(shown, cmap="magma", vmin=-4 if log else 0, vmax=0 if log else 1)
        r95, r_all = receptive_field_radius(erf), receptive_field_radius(erf, mass=1.0)
        ax.set_title(f"{name}\n95% within r={r95}, non-zero r={r_all}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    profile_ax = axes[-1]
    for name, erf in maps.items():
        row = erf[erf.shape[0] // 2]
        profile_ax.plot(np.arange(len(row)) - len(row) // 2, np.maximum(row, 1e-6), label=name)
    profile_ax.set_yscale("log" if log else "linear")
    profile_ax.set_title("centre row", fontsize=9)
    profile_ax.set_xlabel("offset from centre (px)")
    profile_ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_lines(
    curves: dict[str, list[float] | np.ndarray], xlabel: str, ylabel: str, title: str = "", x_start: int = 1
) -> Figure:
    """A few named curves against a step index starting at ``x_start`` (depth, level, ...)."""
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, ys in curves.items():
        ax.plot(np.arange(x_start, x_start + len(ys)), ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# Chapter 02: feature maps and the two necks


def plot_feature_maps(
    features: dict[str, torch.Tensor], image: torch.Tensor | np.ndarray | None = None, channels: int = 3
) -> Figure:
    """Rows of feature maps: for each named (C, h, w) map, the mean |activation| and its first ``channels``.

    Chapter 02 shows backbone and neck outputs of one image this way. Titles carry the map's shape.
    """
    rows = len(features) + (image is not None)
    cols = channels + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    r = 0
    if image is not None:
        axes[0, 0].imshow(_image_hwc(image), interpolation="nearest")
        axes[0, 0].set_title("input", fontsize=8)
        r = 1
    for name, fmap in features.items():
        if fmap.ndim != 3:
            raise ValueError(f"feature map {name!r} should be (C, h, w), got shape {tuple(fmap.shape)}; drop B.")
        fmap = fmap.detach().float().cpu()
        c, h, w = fmap.shape
        axes[r, 0].imshow(fmap.abs().mean(0).numpy(), cmap="viridis", interpolation="nearest")
        axes[r, 0].set_title(f"{name} mean|a|\n({c}, {h}, {w})", fontsize=8)
        for k in range(min(channels, c)):
            axes[r, k + 1].imshow(fmap[k].numpy(), cmap="magma", interpolation="nearest")
            axes[r, k + 1].set_title(f"{name} ch {k}", fontsize=8)
        r += 1
    fig.tight_layout()
    return fig


def neck_dependencies(neck: nn.Module, channels: tuple[int, int, int], size: int = 64) -> np.ndarray:
    """Which neck output depends on which input: a (3 outputs, 3 inputs) bool matrix.

    Entry [i, j] is True when the gradient of output level i (P3, P4, P5) with respect to input level j
    (C3, C4, C5) is non-zero on a seeded random input of ``size`` pixels (strides 8, 16, 32).
    Chapter 02 compares a top-down FPN with the PAFPN this way.
    """
    neck.eval()
    gen = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(1, c, size // s, size // s, generator=gen).requires_grad_(True)
        for c, s in zip(channels, STRIDES, strict=True)
    ]
    outputs = list(neck(inputs))[:3]
    deps = np.zeros((3, 3), dtype=bool)
    for i, out in enumerate(outputs):
        grads = torch.autograd.grad(out.sum(), inputs, retain_graph=True, allow_unused=True)
        deps[i] = [g is not None and bool(g.abs().sum() > 0) for g in grads]
    return deps


def plot_neck_diagram(show_bottom_up: bool = True) -> Figure:
    """Boxes and arrows: backbone C3-C5, the top-down path and (optionally) the PAFPN bottom-up path.

    The route from C3 to the coarsest output is drawn in red: through the backbone for a top-down FPN,
    through the neck's bottom-up path for the PAFPN.
    """
    fig, ax = plt.subplots(figsize=(6.5 if show_bottom_up else 4.8, 3.6))
    ys = {3: 0.0, 4: 1.0, 5: 2.0}
    cols = {"C": 0.0, "T": 1.5, "N": 3.0}

    def node(x: float, y: float, text: str, colour: str) -> None:
        ax.add_patch(Rectangle((x - 0.4, y - 0.22), 0.8, 0.44, facecolor=colour, edgecolor="black"))
        ax.text(x, y, text, ha="center", va="center", fontsize=9)

    def arrow(a: tuple[float, float], b: tuple[float, float], colour: str = "grey", lw: float = 1.2) -> None:
        ax.add_patch(
            FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color=colour, lw=lw, shrinkA=14, shrinkB=14)
        )

    def path(a: tuple[float, float], b: tuple[float, float]) -> None:
        arrow(a, b, "tab:red", 2.4)

    backbone_arrow = arrow if show_bottom_up else path
    for lvl, y in ys.items():
        node(cols["C"], y, f"C{lvl}", "#dde8f7")
    backbone_arrow((cols["C"], ys[3]), (cols["C"], ys[4]))
    backbone_arrow((cols["C"], ys[4]), (cols["C"], ys[5]))
    top_names = {5: "R5", 4: "T4/R4", 3: "T3"} if show_bottom_up else {5: "P5", 4: "P4", 3: "P3"}
    on_path = 3 if show_bottom_up else 5
    for lvl, y in ys.items():
        node(cols["T"], y, top_names[lvl], "#fde7c8")
        (path if lvl == on_path else arrow)((cols["C"], y), (cols["T"], y))
    arrow((cols["T"], ys[5]), (cols["T"], ys[4]))
    arrow((cols["T"], ys[4]), (cols["T"], ys[3]))
    if show_bottom_up:
        for lvl, y in ys.items():
            node(cols["N"], y, {3: "P3", 4: "N4, P4", 5: "N5, P5"}[lvl], "#d9f2d9")
        arrow((cols["T"], ys[3]), (cols["N"], ys[3]))  # P3 = out_conv(T3)
        path((cols["T"], ys[3]), (cols["N"], ys[4]))  # N4 from down(T3)
        path((cols["N"], ys[4]), (cols["N"], ys[5]))
        arrow((cols["T"], ys[4]), (cols["N"], ys[4]))
        arrow((cols["T"], ys[5]), (cols["N"], ys[5]))
    ax.set_xlim(-0.7, (cols["N"] if show_bottom_up else cols["T"]) + 0.8)
    ax.set_ylim(-0.6, 2.6)
    ax.set_aspect("equal")
    ax.axis("off")
    title = "PAFPN: C3 reaches P5 inside the neck" if show_bottom_up else "FPN: C3 reaches P5 only via the backbone"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# Chapter 03: distance box coding and initial scores


def plot_distance_coding(
    prior_xy: tuple[float, float],
    distances: tuple[float, float, float, float],
    stride: int,
    canvas: tuple[int, int] = (64, 64),
) -> Figure:
    """A prior point, its four predicted distances (l, t, r, b in units of the stride) and the decoded box.

    Box = (x - l*s, y - t*s, x + r*s, y + b*s): chapter 03's distance coding. ``canvas`` is (H, W) pixels.
    """
    x, y = prior_xy
    l, t, r, b = (d * stride for d in distances)
    fig, ax = plt.subplots(figsize=(4, 4))
    h, w = canvas
    gx, gy = np.meshgrid(np.arange(0, w, stride), np.arange(0, h, stride))
    ax.scatter(gx.ravel(), gy.ravel(), s=6, color="lightgrey", label=f"priors (stride {stride})")
    ax.add_patch(Rectangle((x - l, y - t), l + r, t + b, fill=False, edgecolor="tab:green", lw=2, label="box"))
    for (dx, dy), name in zip([(-l, 0), (0, -t), (r, 0), (0, b)], "ltrb", strict=True):
        ax.add_patch(FancyArrowPatch((x, y), (x + dx, y + dy), arrowstyle="-|>", mutation_scale=10, color="tab:blue"))
        label_x, label_y = x + dx / 2 + (stride / 3 if dx == 0 else 0), y + dy / 2 - (stride / 4 if dy == 0 else 0)
        ax.text(label_x, label_y, name, color="tab:blue", fontsize=11, ha="center", va="center")
    ax.scatter([x], [y], s=40, color="tab:red", zorder=3, label="the prior point")
    ax.set_xlim(-stride / 2, w)
    ax.set_ylim(h, -stride / 2)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"box = ({x - l:g}, {y - t:g}, {x + r:g}, {y + b:g})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_score_histogram(scores: dict[str, torch.Tensor], prior_prob: float = 0.01) -> Figure:
    """Histogram of sigmoid scores (any shape) per name, with a line at ``prior_prob``.

    The x range covers the scores and ``prior_prob``, so a narrow start-of-training spread stays visible.
    """
    values = {name: s.detach().float().cpu().ravel().numpy() for name, s in scores.items()}
    lo = min([prior_prob] + [v.min() for v in values.values() if v.size])
    hi = max([prior_prob] + [v.max() for v in values.values() if v.size])
    pad = max(hi - lo, 1e-6) * 0.05
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, v in values.items():
        ax.hist(v, bins=60, range=(lo - pad, hi + pad), alpha=0.6, label=name, log=True)
    ax.axvline(prior_prob, color="black", ls="--", lw=1, label=f"p = {prior_prob}")
    ax.set_xlabel("sigmoid(cls logit)")
    ax.set_ylabel("count (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# Chapter 04: priors and relative coordinates


def prior_coordinate_maps(
    image_size: tuple[int, int], level: int, row: int, col: int, mask_stride: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior at (row, col) of ``level`` (0, 1, 2 for strides 8, 16, 32) and its coordinate maps.

    Returns (prior (4,) = x, y, stride_w, stride_h; coords (2, H/8, W/8) channels [x, y]) computed with
    ``rtmdet_lesson.priors``: the two extra input channels of the dynamic mask head for that instance.
    """
    from rtmdet_lesson.priors import grid_priors, relative_coordinates

    h, w = image_size
    stride = STRIDES[level]
    fh, fw = h // stride, w // stride
    if not (0 <= row < fh and 0 <= col < fw):
        raise ValueError(f"prior (row={row}, col={col}) is outside level {level}'s {fh}x{fw} grid; pick a smaller one.")
    prior = grid_priors([(fh, fw)], strides=(stride,))[row * fw + col]  # (4,)
    coords = relative_coordinates(prior[None, :2], prior[None, 2], (h // mask_stride, w // mask_stride), mask_stride)
    return prior, coords[0]  # (4,), (2, h/8, w/8)


def prior_coordinates_figure(image: torch.Tensor | np.ndarray, level: int = 1, x: int = 100, y: int = 100) -> Figure:
    """Three panels: the image with the prior grid of ``level`` and one prior, then that prior's x and y maps.

    The prior is the one of the cell holding pixel (x, y), i.e. at (x // s * s, y // s * s). Chapter 04's
    widget drives this with sliders; ``image`` is (3, H, W) or (H, W, 3) with H and W multiples of 32.
    The colour scale is -1..1 for every level (8 strides either side of the prior; it saturates beyond), so
    the flatter ramps of coarser levels show.
    """
    img = _image_hwc(image)
    h, w = img.shape[:2]
    stride = STRIDES[level]
    prior, coords = prior_coordinate_maps((h, w), level, min(y, h - 1) // stride, min(x, w - 1) // stride)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    axes[0].imshow(img, interpolation="nearest")
    gx, gy = np.meshgrid(np.arange(0, w, stride), np.arange(0, h, stride))
    axes[0].scatter(gx.ravel(), gy.ravel(), s=4 if stride == 8 else 9, color="white", edgecolor="black", lw=0.3)
    px, py = float(prior[0]), float(prior[1])
    axes[0].scatter([px], [py], s=60, color="tab:red", edgecolor="white", zorder=3)
    axes[0].set_title(f"level {level} (stride {stride}): prior ({px:g}, {py:g})", fontsize=9)
    for ax, k, name in zip(axes[1:], (0, 1), ("x", "y"), strict=True):
        im = ax.imshow(coords[k].cpu().numpy(), cmap="RdBu_r", vmin=-1, vmax=1, extent=(-4, w - 4, h - 4, -4))
        ax.scatter([px], [py], s=40, color="black", marker="+")
        ax.set_title(f"rel_{name} = (prior - grid) / {stride * 8}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_small_object_priors(box: tuple[float, float, float, float], stride: int = 8, margin: int = 2) -> Figure:
    """A box and the prior points around it; points strictly inside the box are filled, others hollow.

    Chapter 04's small-object failure: a box that falls between stride points contains no prior, so no
    prior can be assigned to it. ``margin`` is how many stride cells to draw around the box.
    """
    x1, y1, x2, y2 = box
    lo_x, lo_y = (np.floor(x1 / stride) - margin) * stride, (np.floor(y1 / stride) - margin) * stride
    hi_x, hi_y = (np.ceil(x2 / stride) + margin) * stride, (np.ceil(y2 / stride) + margin) * stride
    gx, gy = np.meshgrid(np.arange(lo_x, hi_x + 1, stride), np.arange(lo_y, hi_y + 1, stride))
    inside = (gx > x1) & (gx < x2) & (gy > y1) & (gy < y2)
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, facecolor="tab:orange", alpha=0.4, edgecolor="tab:orange"))
    ax.scatter(gx[~inside], gy[~inside], s=30, facecolor="none", edgecolor="black", label="prior outside")
    if inside.any():
        ax.scatter(gx[inside], gy[inside], s=30, color="tab:green", label="prior inside")
    ax.set_xlim(lo_x - stride / 2, hi_x + stride / 2)
    ax.set_ylim(hi_y + stride / 2, lo_y - stride / 2)
    ax.set_aspect("equal")
    title = f"box {x2 - x1:g}x{y2 - y1:g} px, stride {stride}\npriors strictly inside: {int(inside.sum())}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
