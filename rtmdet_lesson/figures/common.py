"""What every picture of images and instances needs, once: an image as an ``(H, W, 3)`` array, a colour per
instance, masks painted over an image, and labels placed so that they do not cover each other.

The chapters' figure modules (``sprites``, ``instances``, ``assignment``, ``network``, ``rotated``) draw with
these; none keeps its own copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from rtmdet_lesson.predict import to_rgb_tensor

__all__ = ["draw_box_labels", "image_hwc", "instance_colors", "mask_outline", "overlay_instances", "place_labels"]


def image_hwc(image) -> np.ndarray:
    """One image -> an ``(H, W, 3)`` uint8 array for ``imshow``.

    Takes what ``predict`` takes (a ``(3, H, W)`` or ``(H, W, 3)`` uint8 tensor, an ``(H, W, 3)`` uint8 array,
    a Pillow image, a file path) and also float images with values 0-255 (rounded and clipped), such as a
    tensor after arithmetic. Anything else gets ``predict``'s clear ``ValueError``.
    """
    if isinstance(image, torch.Tensor) and image.dtype.is_floating_point:
        image = image.detach().round().clamp(0, 255).to(torch.uint8)
    elif isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return to_rgb_tensor(image).permute(1, 2, 0).cpu().numpy()  # (3, H, W) -> (H, W, 3)


def instance_colors(n: int) -> np.ndarray:
    """``n`` RGB colours in [0, 1], ``(n, 3)``: matplotlib's tab10, repeating after ten."""
    return np.asarray(plt.get_cmap("tab10").colors)[np.arange(n) % 10].reshape(n, 3)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a bool mask ``(H, W)`` that touch a pixel outside it (4-neighbourhood).

    Outside the image counts as outside the mask, so an object cut by the image border is outlined there too.
    """
    padded = np.pad(mask, 1)  # (H + 2, W + 2), False around
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]  # all four neighbours in
    return mask & ~inner


def overlay_instances(image, masks, alpha: float = 0.45, colors: np.ndarray | None = None) -> np.ndarray:
    """The image ``(H, W, 3)`` uint8 with each mask ``(G, H, W)`` filled translucently and outlined.

    Each instance gets ``colors[i]`` (RGB in [0, 1]; default ``instance_colors(G)``). The outline is the mask's
    own border pixels painted opaque, so thin parts and occlusion edges stay visible. Pixels outside every
    mask are unchanged.
    """
    out = image_hwc(image).astype(np.float64)  # (H, W, 3)
    masks = np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != out.shape[:2]:
        raise ValueError(f"masks must be (G, H, W) with (H, W) = {out.shape[:2]}, got {masks.shape}")
    colors = instance_colors(len(masks)) if colors is None else np.asarray(colors, dtype=np.float64)
    if len(colors) != len(masks):
        raise ValueError(f"got {len(colors)} colours for {len(masks)} masks")
    for mask, color in zip(masks, colors * 255, strict=True):
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        out[mask_outline(mask)] = color
    return out.round().astype(np.uint8)


def _overlap(candidates: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """Area of each candidate rectangle ``(T, 4)`` covered by the ``placed`` ones ``(P, 4)``: ``(T,)``."""
    w = np.minimum(candidates[:, None, 2], placed[None, :, 2]) - np.maximum(candidates[:, None, 0], placed[None, :, 0])
    h = np.minimum(candidates[:, None, 3], placed[None, :, 3]) - np.maximum(candidates[:, None, 1], placed[None, :, 1])
    return (w.clip(min=0) * h.clip(min=0)).sum(1)  # (T,)


def place_labels(boxes, sizes: Sequence[tuple[float, float]], image_size: tuple[int, int]) -> np.ndarray:
    """Where to put one text label per box so that labels do not cover each other: ``(K, 4)`` x1, y1, x2, y2.

    Args:
        boxes: ``(K, 4)`` x1y1x2y2 of the objects, most important first (a label placed earlier keeps its
            place; later ones move).
        sizes: ``(width, height)`` of each label, in the same units as the boxes (image pixels).
        image_size: ``(H, W)``; labels stay inside the image.

    Each label tries, in turn, just above the box's top-left corner, inside that corner, just below the box and
    inside its bottom-left corner; the first place that covers no label placed before wins. If all four are
    taken, it takes the nearest free spot on a grid of steps of its height and half its width around the
    first place; only when the image has no free spot left does it take the place it overlaps least.
    """
    boxes = np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64)
    boxes = boxes.reshape(-1, 4)
    if len(sizes) != len(boxes):
        raise ValueError(f"got {len(sizes)} label sizes for {len(boxes)} boxes")
    height, width = image_size
    placed = np.zeros((0, 4))
    for (x1, y1, _, y2), (w, h) in zip(boxes, sizes, strict=True):
        x_max, y_max = max(width - w, 0.0), max(height - h, 0.0)
        first = [(x1, y1 - h), (x1, y1), (x1, y2), (x1, y2 - h)]  # above, inside top, below, inside bottom
        # then every spot on a grid of the label's height and half its width, nearest the first place first
        xs = np.concatenate([np.arange(x1, x_max + w / 2, w / 2), np.arange(x1 - w / 2, -w / 2, -w / 2)])
        ys = np.concatenate([np.arange(y1 - h, y_max + h, h), np.arange(y1 - 2 * h, -h, -h)])
        gx, gy = np.meshgrid(xs, ys)  # (Y, X)
        grid = np.stack([gx.ravel(), gy.ravel()], 1)
        grid = grid[np.argsort(np.hypot(grid[:, 0] - x1, (grid[:, 1] - (y1 - h)) * 2), kind="stable")]
        corners = np.concatenate([np.array(first), grid])  # (T, 2) top-left corners
        corners = np.stack([corners[:, 0].clip(0, x_max), corners[:, 1].clip(0, y_max)], 1)  # inside the image
        tries = np.concatenate([corners, corners + [w, h]], 1)  # (T, 4)
        covered = _overlap(tries, placed)
        free = np.flatnonzero(covered == 0)
        best = tries[free[0]] if len(free) else tries[covered.argmin()]
        placed = np.concatenate([placed, best[None]])
    return placed


def draw_box_labels(ax, boxes, texts: Sequence[str], colors, image_size: tuple[int, int], fontsize: float = 7,
                    alpha: float = 0.85) -> list:
    """Write ``texts[i]`` on a patch of ``colors[i]`` next to ``boxes[i]`` (``(K, 4)`` x1y1x2y2, most important
    first) on an ``imshow`` axes, at the places ``place_labels`` picks, so that no label covers another.

    Each label's size is measured in image pixels at the axes' current scale; call this after the image is
    drawn and the figure has its size. Returns the text artists.
    """
    if len(texts) == 0:
        return []
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    ax.apply_aspect()
    to_data = ax.transData.inverted()
    (x0, y0), (x1, y1) = to_data.transform([(0, 0), (1, 1)])
    per_px = abs(x1 - x0), abs(y1 - y0)  # image pixels per display pixel, x and y
    pad = 1.5 * fig.dpi / 72  # the patch's padding around the text, display pixels
    artists, sizes = [], []
    for text, color in zip(texts, colors, strict=True):
        artist = ax.text(0, 0, text, color="white", fontsize=fontsize, ha="left", va="top", clip_on=True,
                         bbox={"facecolor": color, "edgecolor": "none", "pad": 1.5, "alpha": alpha})
        extent = artist.get_window_extent(renderer)  # the text alone, display pixels
        sizes.append(((extent.width + 2 * pad) * per_px[0], (extent.height + 2 * pad) * per_px[1]))
        artists.append(artist)
    places = place_labels(boxes, sizes, image_size)  # (K, 4) x1, y1, x2, y2 in image pixels
    for artist, (px, py, _, _) in zip(artists, places, strict=True):
        artist.set_position((px - 0.5 + pad * per_px[0], py - 0.5 + pad * per_px[1]))  # pixel centres at integers
    return artists
