"""Geometric steps on a sample: resize, crop, flip, pad, letterbox, and their random versions (chapter 07).

Images are resized bilinearly, masks by nearest neighbour at pixel centres, so a mask stays on its object's
pixels; boxes are then recomputed from the masks (``samples.with_masks``). The deterministic functions
(``resize_sample``, ``crop_sample``, ...) do the work; each random class draws its parameters from the
``numpy.random.Generator`` it is given and calls one of them. The reference's classes: ``RandomResize``
(``mmcv/transforms/processing.py``), ``RandomCrop``, ``RandomFlip`` and ``Pad``
(``mmdet/datasets/transforms/transforms.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rtmdet_lesson.data.transforms.samples import with_masks
from rtmdet_lesson.preprocess import PAD_VALUE, letterbox_image


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w) stored channels-last: bilinear, antialiased when shrinking.

    torch's uint8 kernel (what torchvision's Resize runs on uint8 tensors) works on channels-last pixels with
    fixed-point weights, within one grey level of the float computation that ``preprocess.letterbox_image``
    feeds the model at test time (tested); chapter 09 measures what it saves. At the same size it is the
    identity (tested), so the input itself is returned without running it.
    """
    if tuple(size) == tuple(image.shape[1:]):
        return image
    pixels = image[None].contiguous(memory_format=torch.channels_last)  # (1, 3, H, W) stored as (1, H, W, 3)
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _nearest_index(in_size: int, out_size: int, device) -> torch.Tensor:
    """Source index (out_size,) of each output pixel for a nearest resize, sampled at pixel centres."""
    centres = torch.arange(out_size, device=device, dtype=torch.float64) + 0.5
    return (centres * (in_size / out_size)).floor().long().clamp(max=in_size - 1)


def _pick(masks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """bool (G, H, W) at source ``rows`` (h,) and ``cols`` (w,) -> contiguous bool (G, h, w)."""
    picked = masks.index_select(1, rows).transpose(1, 2)  # (G, W, h): whole rows copied, then columns as rows
    return picked.index_select(1, cols).transpose(1, 2).contiguous()  # (G, h, w)


def _resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """bool (G, H, W) -> bool (G, h, w) by nearest neighbour at pixel centres (aligned with the bilinear image).

    At the same size the input itself is returned (the index is the identity, tested).
    """
    if tuple(size) == tuple(masks.shape[1:]):
        return masks
    return _pick(masks, _nearest_index(masks.shape[1], size[0], masks.device),
                 _nearest_index(masks.shape[2], size[1], masks.device))


def resize_sample(image: torch.Tensor, target: dict, size: tuple[int, int]):
    """Resize a sample to ``size`` (h, w), whatever the aspect ratio; masks follow, boxes are recomputed."""
    size = (max(1, int(size[0])), max(1, int(size[1])))
    return _resize_image(image, size).contiguous(), with_masks(target, _resize_masks(target["masks"], size))


def resize_crop_sample(image: torch.Tensor, target: dict, size: tuple[int, int], window: tuple[int, int, int, int]):
    """``resize_sample`` to ``size`` then ``crop_sample`` to ``window`` (top, left, height, width), in one step.

    Same result as the two steps (tested), but the masks are only computed inside the window, and only for the
    instances with a pixel in the source rectangle that the window samples from: after a mosaic most instances
    lie outside the crop, and resizing them would only make empty masks for ``with_masks`` to drop.
    """
    top, left, height, width = window
    image = _resize_image(image, size)[:, top : top + height, left : left + width].contiguous()
    masks = target["masks"]  # (G, H, W)
    rows = _nearest_index(masks.shape[1], size[0], masks.device)[top : top + height]  # (h,) source rows, ascending
    cols = _nearest_index(masks.shape[2], size[1], masks.device)[left : left + width]  # (w,)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    source = masks[:, r0:r1, c0:c1]  # (G, r1 - r0, c1 - c0) view: every pixel the window can sample
    inside = source.view(torch.uint8).amax(dim=(1, 2)) > 0  # (G,) the instances the window can see
    labels = target["labels"]
    if not bool(inside.all()):
        source, labels = source[inside], labels[inside]
    return image, with_masks(target, _pick(source, rows - r0, cols - c0), labels)


def crop_sample(image: torch.Tensor, target: dict, top: int, left: int, height: int, width: int):
    """Cut the window [top, top + height) x [left, left + width) out of a sample (clipped to the image)."""
    bottom, right = top + height, left + width
    masks = target["masks"][:, top:bottom, left:right]  # (G, h, w)
    return image[:, top:bottom, left:right], with_masks(target, masks)


def hflip_sample(image: torch.Tensor, target: dict):
    """Mirror a sample left-right. Applying it twice gives the sample back."""
    return image.flip(-1), with_masks(target, target["masks"].flip(-1))


def paste_(canvas: torch.Tensor, patch: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Write ``patch`` (..., h, w) into ``canvas`` (..., CH, CW) at (top, left), in place; returns the canvas.

    ``top``/``left`` may be negative or run past the canvas; only the overlapping part is copied.
    """
    ch, cw = canvas.shape[-2:]
    h, w = patch.shape[-2:]
    y0, y1 = max(top, 0), min(top + h, ch)
    x0, x1 = max(left, 0), min(left + w, cw)
    if y1 > y0 and x1 > x0:
        canvas[..., y0:y1, x0:x1] = patch[..., y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def pad_sample(image: torch.Tensor, target: dict, size: tuple[int, int], pad_value: int = PAD_VALUE):
    """Pad a sample at the bottom/right to ``size`` (h, w): image with grey ``pad_value``, masks with 0."""
    h, w = image.shape[1:]
    if h > size[0] or w > size[1]:
        raise ValueError(
            f"pad_sample: the image ({h}x{w}) is larger than the pad size {size[0]}x{size[1]}; "
            "crop or resize it first (RandomCrop before Pad)."
        )
    if (h, w) == tuple(size):
        return image, target
    canvas = torch.full((3, *size), pad_value, dtype=image.dtype, device=image.device)
    masks = target["masks"].new_zeros((target["masks"].shape[0], *size))  # (G, h, w)
    out = dict(target)
    out["masks"] = paste_(masks, target["masks"], 0, 0)
    return paste_(canvas, image, 0, 0), out


def letterbox_sample(image: torch.Tensor, target: dict, canvas_size: tuple[int, int]):
    """Keep-ratio resize into a padded canvas (the test pipeline); returns (image, target, Letterbox).

    Uses ``preprocess.letterbox_image`` for the image so training, evaluation and ``predict`` share one
    geometry; the masks are resized with nearest and padded with 0. ``Letterbox.boxes_to_original`` maps the
    boxes back.
    """
    canvas, box = letterbox_image(image, canvas_size)
    masks = _resize_masks(target["masks"], box.resized_size)  # (G, h, w)
    empty = masks.new_zeros((masks.shape[0], *canvas_size))  # (G, CH, CW)
    return canvas, with_masks(target, paste_(empty, masks, box.pad_top, box.pad_left)), box


class RandomResize:
    """Keep-ratio resize to fit ``scale * r`` with r ~ U(ratio_range).

    ``scale`` is (h, w): the mosaic canvas (2S, 2S) in stage 1, (S, S) in stage 2.
    """

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float] = (0.5, 2.0)):
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range}.")
        self.scale, self.ratio_range = scale, ratio_range

    def draw_size(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        """The random output size (h, w) for an input of h x w (one uniform draw)."""
        ratio = rng.uniform(*self.ratio_range)
        fit_h, fit_w = int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        factor = min(fit_h / h, fit_w / w)
        return max(1, round(h * factor)), max(1, round(w * factor))

    def __call__(self, image, target, rng: np.random.Generator):
        return resize_sample(image, target, self.draw_size(*image.shape[1:], rng))


class RandomCrop:
    """Crop a random window of ``size`` (h, w) (smaller if the image is smaller); zero instances may be left.

    The reference's RandomCrop with recompute_bbox and allow_negative_crop.
    """

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def draw_window(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """The random window (top, left, height, width) inside an image of h x w (two integer draws)."""
        crop_h, crop_w = min(self.size[0], h), min(self.size[1], w)
        top = int(rng.integers(0, h - crop_h + 1))
        left = int(rng.integers(0, w - crop_w + 1))
        return top, left, crop_h, crop_w

    def __call__(self, image, target, rng: np.random.Generator):
        return crop_sample(image, target, *self.draw_window(*image.shape[1:], rng))


class RandomResizeCrop:
    """``RandomResize`` then ``RandomCrop`` fused: the same random draws and the same result (tested), but the
    masks are only computed inside the crop (``resize_crop_sample``).

    The pipelines use this; the two separate classes are there to show and test each step.
    """

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float], size: tuple[int, int]):
        self.resize, self.crop = RandomResize(scale, ratio_range), RandomCrop(size)

    def __call__(self, image, target, rng: np.random.Generator):
        size = self.resize.draw_size(*image.shape[1:], rng)
        return resize_crop_sample(image, target, size, self.crop.draw_window(*size, rng))


class RandomFlip:
    """Horizontal flip with probability ``prob`` (one uniform draw)."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, image, target, rng: np.random.Generator):
        return hflip_sample(image, target) if rng.uniform() < self.prob else (image, target)


class Pad:
    """Pad at the bottom/right to ``size`` (h, w) with grey 114; masks with 0."""

    def __init__(self, size: tuple[int, int], pad_value: int = PAD_VALUE):
        self.size, self.pad_value = size, pad_value

    def __call__(self, image, target, rng=None):
        return pad_sample(image, target, self.size, self.pad_value)


class LetterboxResize:
    """The test pipeline's only step: ``letterbox_sample`` into ``size``; stores the geometry as target["letterbox"]."""

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def __call__(self, image, target, rng=None):
        image, target, box = letterbox_sample(image, target, self.size)
        target["letterbox"] = box
        return image, target
