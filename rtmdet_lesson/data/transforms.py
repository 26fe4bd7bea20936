"""Mask-aware augmentation: the reference's training pipelines, built from small functions (chapter 07).

A sample is ``(image, target)`` as the datasets give it: ``image`` uint8 (3, H, W) RGB and ``target`` a dict with
``boxes`` float32 (G, 4) x1y1x2y2 (exclusive right/bottom), ``labels`` int64 (G,), ``masks`` bool (G, H, W) and
``image_id``. Two rules hold after every step:

- the masks are the truth: boxes are **recomputed** from the visible mask (``masks_to_boxes``), never moved
  arithmetically, so a crop or an occlusion can never leave a box bigger than what is left of the object;
- an instance whose mask became empty is removed together with its label.

Every random transform is a small class called as ``t(image, target, rng)``; ``rng`` is a
``numpy.random.Generator`` passed in explicitly (no global random state), so a run is reproducible and
resumable from its seed. Deterministic steps are plain functions underneath (``resize_sample``,
``crop_sample``, ...). The pipelines of the reference (train_pipeline and
train_pipeline_stage2 in configs/rtmdet) are at the bottom:
``stage1_pipeline`` (mosaic and mixup), ``stage2_pipeline`` (light, the last 20 epochs), ``train_pipeline``
(both, with the switch) and ``eval_pipeline`` (letterbox).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rtmdet_lesson.preprocess import PAD_VALUE, letterbox_image

# The reference's augmentation settings per model size (configs/rtmdet/rtmdet-ins_*): random-resize ratio range and
# the two caches (size, random pop vs FIFO) and the mixup probability.
_TINY = dict(
    ratio_range=(0.5, 2.0),
    mosaic_max_cached=20,
    mosaic_random_pop=False,
    mixup_max_cached=10,
    mixup_random_pop=False,
    mixup_prob=0.5,
)
_SMALL = dict(
    ratio_range=(0.5, 2.0),
    mosaic_max_cached=40,
    mosaic_random_pop=True,
    mixup_max_cached=20,
    mixup_random_pop=True,
    mixup_prob=1.0,
)
_LARGE = dict(_SMALL, ratio_range=(0.1, 2.0))  # "large-scale jitter" for m, l and x
REFERENCE_AUGMENT = {"tiny": _TINY, "s": _SMALL, "m": _LARGE, "l": _LARGE, "x": _LARGE}


# ---------------------------------------------------------------------------------------------------------------
# Checking and the two rules
# ---------------------------------------------------------------------------------------------------------------


def _projections(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which columns (G, W) and rows (G, H) each mask (G, H, W) touches.

    ``amax`` over the uint8 view: the same as ``any`` and an order of magnitude faster on a CPU.
    """
    as_bytes = masks.view(torch.uint8)
    return as_bytes.amax(dim=1) > 0, as_bytes.amax(dim=2) > 0


def _boxes_from_projections(cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Boxes (G, 4) from which columns (G, W) and rows (G, H) each mask touches; all-zero for empty masks."""
    w, h = cols.shape[1], rows.shape[1]
    xs = torch.arange(w, device=cols.device)
    ys = torch.arange(h, device=rows.device)
    x1 = torch.where(cols, xs, w).amin(dim=1)  # (G,) first touched column
    x2 = torch.where(cols, xs + 1, 0).amax(dim=1)  # (G,) one past the last
    y1 = torch.where(rows, ys, h).amin(dim=1)
    y2 = torch.where(rows, ys + 1, 0).amax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()  # (G, 4)
    return torch.where(cols.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight x1y1x2y2 boxes (G, 4) float32 around boolean masks (G, H, W), exclusive right/bottom.

    A mask covering columns 3..5 gives x1 = 3, x2 = 6. An empty mask gives an all-zero box (callers drop
    empty masks first). Chapter 07 builds this.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks_to_boxes wants masks of shape (G, H, W), got {tuple(masks.shape)}.")
    return _boxes_from_projections(*_projections(masks.bool()))


def check_sample(image: torch.Tensor, target: dict) -> None:
    """Raise ValueError if ``(image, target)`` is not a dataset sample (shapes and dtypes of the contracts).

    Chapter 07 builds this.
    """
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"Expected an image of uint8 (3, H, W) RGB, got {got}; convert it as the datasets do.")
    missing = {"boxes", "labels", "masks"} - set(target)
    if missing:
        raise ValueError(f"The target lacks {sorted(missing)}; give boxes, labels and masks (see data/coco.py).")
    masks, labels, boxes = target["masks"], target["labels"], target["boxes"]
    if masks.dtype != torch.bool or masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"Expected masks bool (G, {image.shape[1]}, {image.shape[2]}) to match the image, got "
            f"{masks.dtype} {tuple(masks.shape)}; resize masks with the image (and use .bool())."
        )
    g = masks.shape[0]
    if labels.shape != (g,) or boxes.shape != (g, 4):
        raise ValueError(
            f"{g} masks but labels {tuple(labels.shape)} and boxes {tuple(boxes.shape)}; "
            "give one label and one box per mask."
        )


def with_masks(target: dict, masks: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """A new target for new masks (G, H, W): empty masks dropped with their labels, boxes recomputed.

    ``labels`` defaults to ``target["labels"]`` (aligned with ``masks``). Other keys are kept.
    Chapter 07 builds this.
    """
    labels = target["labels"] if labels is None else labels
    cols, rows = _projections(masks)  # (G, W), (G, H)
    keep = cols.any(dim=1)  # (G,) True where some pixel is left
    out = dict(target)
    out["masks"] = masks if bool(keep.all()) else masks[keep]
    out["labels"] = labels[keep]
    out["boxes"] = _boxes_from_projections(cols[keep], rows[keep])
    return out


def filter_annotations(image: torch.Tensor, target: dict, min_wh: tuple[float, float] = (1, 1)):
    """Keep instances whose box is wider than ``min_wh[0]`` AND taller than ``min_wh[1]`` (strictly).

    The reference's FilterAnnotations with min_gt_bbox_wh (1, 1): an object only one pixel wide or tall is
    dropped. One difference: when no instance survives the reference draws another image; here the sample is
    kept with zero instances (a valid negative for the loss). Chapter 07 builds this.
    """
    boxes = target["boxes"]
    keep = ((boxes[:, 2] - boxes[:, 0]) > min_wh[0]) & ((boxes[:, 3] - boxes[:, 1]) > min_wh[1])  # (G,)
    out = dict(target)
    for key in ("boxes", "labels", "masks"):
        out[key] = target[key][keep]
    return image, out


# ---------------------------------------------------------------------------------------------------------------
# Deterministic geometric steps (images bilinear, masks nearest)
# ---------------------------------------------------------------------------------------------------------------


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w) stored channels-last (the input itself at the same size): bilinear,
    antialiased when shrinking.

    torch's uint8 kernel (what torchvision's Resize runs on uint8 tensors) works on channels-last pixels with
    fixed-point weights: within one grey level of the float computation (``preprocess.letterbox_image``'s, which
    feeds the model at test time) and 2-7x faster than it (chapter 09 section 8).
    """
    if tuple(size) == tuple(image.shape[1:]):  # the identity (exactly, tested): skip the kernel and its copies
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
    """bool (G, H, W) -> bool (G, h, w) by nearest neighbour at pixel centres (aligned with the bilinear image)."""
    if tuple(size) == tuple(masks.shape[1:]):  # the identity (exactly, tested): no copy
        return masks
    return _pick(masks, _nearest_index(masks.shape[1], size[0], masks.device),
                 _nearest_index(masks.shape[2], size[1], masks.device))


def resize_sample(image: torch.Tensor, target: dict, size: tuple[int, int]):
    """Resize a sample to ``size`` (h, w), whatever the aspect ratio; masks follow, boxes are recomputed.

    Chapter 07 builds this.
    """
    size = (max(1, int(size[0])), max(1, int(size[1])))
    return _resize_image(image, size).contiguous(), with_masks(target, _resize_masks(target["masks"], size))


def resize_crop_sample(image: torch.Tensor, target: dict, size: tuple[int, int], window: tuple[int, int, int, int]):
    """``resize_sample`` to ``size`` then ``crop_sample`` to ``window`` (top, left, height, width), in one step.

    Same result as the two steps (tested), but the masks are only computed inside the window, and only for the
    instances with a pixel in the source rectangle that the window samples from: after a mosaic most instances
    lie outside the crop, and resizing them would only make empty masks for ``with_masks`` to drop.
    Chapter 07 builds this.
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
    """Cut the window [top, top + height) x [left, left + width) out of a sample (clipped to the image).

    Chapter 07 builds this.
    """
    bottom, right = top + height, left + width
    masks = target["masks"][:, top:bottom, left:right]  # (G, h, w)
    return image[:, top:bottom, left:right], with_masks(target, masks)


def hflip_sample(image: torch.Tensor, target: dict):
    """Mirror a sample left-right. Applying it twice gives the sample back. Chapter 07 builds this."""
    return image.flip(-1), with_masks(target, target["masks"].flip(-1))


def paste_(canvas: torch.Tensor, patch: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Write ``patch`` (..., h, w) into ``canvas`` (..., CH, CW) at (top, left), in place; returns the canvas.

    ``top``/``left`` may be negative or run past the canvas; only the overlapping part is copied.
    Chapter 07 builds this.
    """
    ch, cw = canvas.shape[-2:]
    h, w = patch.shape[-2:]
    y0, y1 = max(top, 0), min(top + h, ch)
    x0, x1 = max(left, 0), min(left + w, cw)
    if y1 > y0 and x1 > x0:
        canvas[..., y0:y1, x0:x1] = patch[..., y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def pad_sample(image: torch.Tensor, target: dict, size: tuple[int, int], pad_value: int = PAD_VALUE):
    """Pad a sample at the bottom/right to ``size`` (h, w): image with grey ``pad_value``, masks with 0.

    Chapter 07 builds this.
    """
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
    boxes back. Chapter 07 builds this.
    """
    canvas, box = letterbox_image(image, canvas_size)
    masks = _resize_masks(target["masks"], box.resized_size)  # (G, h, w)
    empty = masks.new_zeros((masks.shape[0], *canvas_size))  # (G, CH, CW)
    return canvas, with_masks(target, paste_(empty, masks, box.pad_top, box.pad_left)), box


# ---------------------------------------------------------------------------------------------------------------
# Colour: YOLOX-style HSV jitter in OpenCV's 8-bit HSV units
# ---------------------------------------------------------------------------------------------------------------


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> float HSV (3, H, W) in OpenCV's 8-bit units.

    Units: H = hue in degrees / 2, so one turn is 0..180; S = 255 * (max - min) / max; V = max, both 0..255.
    These are the units of the reference's gains (hue +-5 = +-10 degrees, saturation/value +-30 of 255).
    OpenCV rounds H, S and V to integers; this keeps them as floats, so a zero shift is an exact round trip.
    Chapter 07 builds this.
    """
    x = image.float()
    r, g, b = x  # each (H, W)
    v = x.amax(dim=0)
    chroma = v - x.amin(dim=0)
    s = 255 * chroma / v.clamp(min=1e-6)  # 0 where v = 0, since chroma is 0 there too
    c = chroma.clamp_(min=1e-6)  # in place: chroma is not needed again
    # Which channel holds the maximum, as 0/1 masks (R first, then G, then B). The channels are whole numbers, so
    # 1 - (v - r) is 1 where r is the maximum and <= 0 elsewhere: float arithmetic, 2-3x faster on a CPU than
    # torch.where and comparisons, and the same hue to the bit (tests/test_transforms.py checks all 2^24 colours)
    in_r = (1 - (v - r)).clamp_(min=0)
    in_g = (1 - (v - g)).clamp_(min=0).mul_(1 - in_r)
    in_b = 1 - in_r - in_g
    numerator = in_r * (g - b) + in_g * (b - r) + in_b * (r - g)
    # sextant offsets 0, 2, 4, and one turn (6) where R is the maximum and G < B (the remainder mod 6)
    offset = (in_g * 2 + in_b * 4).add_(in_r * (b - g).clamp_(0, 1) * 6)
    h = numerator.div_(c).add_(offset).mul_(30)  # 60 degrees = 30 units; 0 for greys (every difference is 0)
    return torch.stack([h, s, v])  # (3, H, W)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Float HSV (3, H, W) in OpenCV 8-bit units -> uint8 RGB (3, H, W), rounded; H wraps mod 180.

    Chapter 07 builds this.
    """
    h, s, v = hsv
    return _hsv_to_rgb(torch.remainder(h, 180), s, v)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``hsv_to_rgb`` of the three (H, W) planes, H in [0, 180); the channels R, G, B (n = 5, 3, 1) as one tensor."""
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device)[:, None, None]  # (3, 1, 1)
    k = h / 30 + n  # (3, H, W) in [1, 11); h / 30 is the sextant, in [0, 6)
    # the ramp min(k, 4 - k) clamped to [0, 1] of k mod 6, without the remainder: the ramp of k (zero for k >= 4)
    # plus the ramp of k - 6 (zero for k < 6), both in place (fresh tensors cost page faults on a CPU)
    ramp = torch.minimum(k, 4 - k, out=torch.empty_like(k)).clamp_(0, 1)
    k -= 6
    ramp += torch.minimum(k, 4 - k).clamp_(0, 1)
    rgb = ramp.mul_(v * (s / 255)).neg_().add_(v)  # v - v * (s / 255) * ramp, (3, H, W)
    return rgb.round_().clamp_(0, 255).to(torch.uint8)


def hsv_shift(image: torch.Tensor, hue: float, saturation: float, value: float) -> torch.Tensor:
    """Shift a uint8 RGB image in OpenCV HSV units: hue wraps mod 180, saturation and value clip to [0, 255].

    A zero shift returns a copy of the image (the round trip is exact, ``tests/test_transforms.py``).
    Chapter 07 builds this.
    """
    if hue == saturation == value == 0:
        return image.clone()
    h, s, v = rgb_to_hsv(image)
    return _hsv_to_rgb(torch.remainder(h + hue, 180), (s + saturation).clamp(0, 255), (v + value).clamp(0, 255))


# ---------------------------------------------------------------------------------------------------------------
# Random transforms: t(image, target, rng) -> (image, target)
# ---------------------------------------------------------------------------------------------------------------


class RandomResize:
    """Keep-ratio resize to fit ``scale * r`` with r ~ U(ratio_range) (the reference's RandomResize).

    ``scale`` is (h, w): the mosaic canvas (2S, 2S) in stage 1, (S, S) in stage 2. Chapter 07 builds this.
    """

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float] = (0.5, 2.0)):
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range}.")
        self.scale, self.ratio_range = scale, ratio_range

    def draw_size(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        """The random output size (h, w) for an input of h x w."""
        ratio = rng.uniform(*self.ratio_range)
        fit_h, fit_w = int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        factor = min(fit_h / h, fit_w / w)
        return max(1, round(h * factor)), max(1, round(w * factor))

    def __call__(self, image, target, rng: np.random.Generator):
        return resize_sample(image, target, self.draw_size(*image.shape[1:], rng))


class RandomCrop:
    """Crop a random window of ``size`` (h, w) (smaller if the image is smaller); zero instances may be left.

    The reference's RandomCrop with recompute_bbox and allow_negative_crop. Chapter 07 builds this.
    """

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def draw_window(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """The random window (top, left, height, width) inside an image of h x w."""
        crop_h, crop_w = min(self.size[0], h), min(self.size[1], w)
        top = int(rng.integers(0, h - crop_h + 1))
        left = int(rng.integers(0, w - crop_w + 1))
        return top, left, crop_h, crop_w

    def __call__(self, image, target, rng: np.random.Generator):
        return crop_sample(image, target, *self.draw_window(*image.shape[1:], rng))


class RandomResizeCrop:
    """``RandomResize`` then ``RandomCrop`` fused: the same random draws and the same result, but the masks are
    only computed inside the crop (after a mosaic most of the resized canvas is thrown away).

    The pipelines use this; the two separate classes are there to show and test each step. Chapter 07.
    """

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float], size: tuple[int, int]):
        self.resize, self.crop = RandomResize(scale, ratio_range), RandomCrop(size)

    def __call__(self, image, target, rng: np.random.Generator):
        size = self.resize.draw_size(*image.shape[1:], rng)
        return resize_crop_sample(image, target, size, self.crop.draw_window(*size, rng))


class RandomHSV:
    """YOLOX HSV jitter: gains U(-1, 1) * (5, 30, 30), each zeroed with probability 0.5, truncated to integers.

    Applied in OpenCV 8-bit HSV units (see ``rgb_to_hsv``); geometry is untouched. Chapter 07 builds this.
    """

    def __init__(self, hue_delta: int = 5, saturation_delta: int = 30, value_delta: int = 30):
        self.deltas = np.array([hue_delta, saturation_delta, value_delta], dtype=np.float64)

    def __call__(self, image, target, rng: np.random.Generator):
        gains = rng.uniform(-1, 1, 3) * self.deltas * rng.integers(0, 2, 3)
        hue, sat, val = np.trunc(gains)  # the reference casts to int16, which truncates toward zero
        return hsv_shift(image, float(hue), float(sat), float(val)), target


class RandomFlip:
    """Horizontal flip with probability ``prob``. Chapter 07 builds this."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, image, target, rng: np.random.Generator):
        return hflip_sample(image, target) if rng.uniform() < self.prob else (image, target)


class Pad:
    """Pad at the bottom/right to ``size`` (h, w) with grey 114; masks with 0. Chapter 07 builds this."""

    def __init__(self, size: tuple[int, int], pad_value: int = PAD_VALUE):
        self.size, self.pad_value = size, pad_value

    def __call__(self, image, target, rng=None):
        return pad_sample(image, target, self.size, self.pad_value)


class FilterAnnotations:
    """``filter_annotations`` as a pipeline step (min_gt_bbox_wh (1, 1) in the reference).

    Chapter 07 builds this.
    """

    def __init__(self, min_wh: tuple[float, float] = (1, 1)):
        self.min_wh = min_wh

    def __call__(self, image, target, rng=None):
        return filter_annotations(image, target, self.min_wh)


class LetterboxResize:
    """The test pipeline's only step: ``letterbox_sample`` into ``size``; stores the geometry as target["letterbox"].

    Chapter 07 builds this.
    """

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def __call__(self, image, target, rng=None):
        image, target, box = letterbox_sample(image, target, self.size)
        target["letterbox"] = box
        return image, target


class _Cache:
    """A bounded list of samples; past ``max_cached`` one leaves, at random (``random_pop``) or the oldest."""

    def __init__(self, max_cached: int, random_pop: bool):
        if max_cached < 1:
            raise ValueError(f"max_cached must be at least 1, got {max_cached}.")
        self.max_cached, self.random_pop, self.items = max_cached, random_pop, []

    def push(self, sample, rng: np.random.Generator) -> None:
        self.items.append(sample)
        if len(self.items) > self.max_cached:
            self.items.pop(int(rng.integers(len(self.items))) if self.random_pop else 0)

    def reset(self) -> None:
        self.items.clear()


class CachedMosaic:
    """Four images on a 2x canvas around a random centre (the reference's CachedMosaic). Chapter 07 builds this.

    Each call first caches the incoming sample (tensors are never modified in place, so references suffice).
    While the cache holds <= 4 samples the input passes through unchanged; after that the input goes
    top-left and three random cached samples (possibly itself) go top-right, bottom-left and bottom-right.
    Each is resized to fit ``size`` (keep ratio) and placed with a corner on the centre
    (cx, cy) = U(center_ratio_range) * (w, h); the canvas is (2h, 2w), grey 114 where nothing lands.
    The cache belongs to this object: each DataLoader worker has its own copy, as in the reference.
    """

    def __init__(
        self,
        size: tuple[int, int] = (640, 640),
        max_cached: int = 40,
        random_pop: bool = True,
        center_ratio_range: tuple[float, float] = (0.5, 1.5),
        prob: float = 1.0,
        pad_value: int = PAD_VALUE,
    ):
        self.size, self.center_ratio_range, self.prob, self.pad_value = size, center_ratio_range, prob, pad_value
        self.cache = _Cache(max_cached, random_pop)

    def reset(self) -> None:
        self.cache.reset()

    def __call__(self, image, target, rng: np.random.Generator):
        self.cache.push((image, target), rng)
        if len(self.cache.items) <= 4 or rng.uniform() > self.prob:
            return image, target
        others = [self.cache.items[int(rng.integers(len(self.cache.items)))] for _ in range(3)]
        h, w = self.size
        cx = int(rng.uniform(*self.center_ratio_range) * w)
        cy = int(rng.uniform(*self.center_ratio_range) * h)
        canvas = torch.full((3, 2 * h, 2 * w), self.pad_value, dtype=torch.uint8, device=image.device)
        pieces = []  # (top, left, masks (G_i, h_i, w_i)) per quadrant
        corners = [(True, True), (True, False), (False, True), (False, False)]  # (top?, left?) quadrant
        for (is_top, is_left), (img, tgt) in zip(corners, [(image, target), *others], strict=True):
            ih, iw = img.shape[1:]
            factor = min(h / ih, w / iw)
            size = (max(1, int(ih * factor)), max(1, int(iw * factor)))
            img = _resize_image(img, size)  # no boxes here: the canvas's with_masks below drops emptied masks
            ph, pw = img.shape[1:]
            top, left = (cy - ph if is_top else cy), (cx - pw if is_left else cx)  # image corner on the centre
            paste_(canvas, img, top, left)
            pieces.append((top, left, _resize_masks(tgt["masks"], size), tgt["labels"]))
        masks = torch.zeros((sum(len(p[3]) for p in pieces), 2 * h, 2 * w), dtype=torch.bool, device=image.device)
        start = 0
        for top, left, piece, labels in pieces:
            paste_(masks[start : start + len(labels)], piece, top, left)  # (G_i, 2h, 2w) view of the canvas masks
            start += len(labels)
        return canvas, with_masks(target, masks, torch.cat([p[3] for p in pieces]))


class CachedMixUp:
    """Blend the sample 50/50 with a cached one and keep both sets of instances (the reference's CachedMixUp).

    The cache holds samples that already went through the pipeline (post mosaic, crop and pad), so one output
    can mix eight source images. While the cache holds <= 1 sample the input passes through. The partner is
    drawn up to ``max_iters`` times until it has instances (else: pass through). It is resized to fit ``size``
    (keep ratio) onto a grey canvas, scaled by U(ratio_range), flipped when a uniform draw > ``flip_ratio``
    (the reference's rule), then a random window of the input's size is cut from it. Unlike the reference,
    the partner's masks are flipped on the same canvas as its image, so they stay aligned for any input size.
    Chapter 07 builds this.
    """

    def __init__(
        self,
        size: tuple[int, int] = (640, 640),
        max_cached: int = 20,
        random_pop: bool = True,
        ratio_range: tuple[float, float] = (1.0, 1.0),
        flip_ratio: float = 0.5,
        max_iters: int = 15,
        prob: float = 1.0,
        pad_value: int = PAD_VALUE,
    ):
        if max_iters < 1:
            raise ValueError(f"max_iters must be at least 1, got {max_iters}.")
        self.size, self.ratio_range, self.flip_ratio = size, ratio_range, flip_ratio
        self.max_iters, self.prob, self.pad_value = max_iters, prob, pad_value
        self.cache = _Cache(max_cached, random_pop)

    def reset(self) -> None:
        self.cache.reset()

    def __call__(self, image, target, rng: np.random.Generator):
        self.cache.push((image, target), rng)
        if len(self.cache.items) <= 1 or rng.uniform() > self.prob:
            return image, target
        for _ in range(self.max_iters):
            other_image, other_target = self.cache.items[int(rng.integers(len(self.cache.items)))]
            if len(other_target["labels"]) > 0:
                break
        if len(other_target["labels"]) == 0:
            return image, target
        jitter = rng.uniform(*self.ratio_range)
        flip = rng.uniform() > self.flip_ratio
        h, w = self.size
        oh, ow = other_image.shape[1:]
        factor = min(h / oh, w / ow)
        other = resize_sample(other_image, other_target, (int(oh * factor), int(ow * factor)))
        other = pad_sample(*other, (h, w), self.pad_value)
        if jitter != 1.0:
            other = resize_sample(*other, (int(h * jitter), int(w * jitter)))
        if flip:
            other = hflip_sample(*other)
        th, tw = image.shape[1:]
        other = pad_sample(*other, (max(th, other[0].shape[1]), max(tw, other[0].shape[2])), self.pad_value)
        top = int(rng.integers(0, other[0].shape[1] - th + 1))
        left = int(rng.integers(0, other[0].shape[2] - tw + 1))
        other_image, other_target = crop_sample(*other, top, left, th, tw)
        mixed = (0.5 * image.float() + 0.5 * other_image.float()).to(torch.uint8)  # truncates, as the reference
        masks = torch.cat([target["masks"], other_target["masks"]])  # (G + G', H, W)
        labels = torch.cat([target["labels"], other_target["labels"]])
        return mixed, with_masks(target, masks, labels)


# ---------------------------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------------------------


class Compose:
    """Run transforms in order: ``pipeline(image, target, rng) -> (image, target)``. Chapter 07 builds this.

    Checks the input sample once; ``reset()`` empties the caches of mosaic and mixup.
    """

    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __call__(self, image, target, rng: np.random.Generator):
        if not isinstance(rng, np.random.Generator):
            raise ValueError(
                f"Pipelines take an explicit numpy Generator, got {type(rng).__name__}; "
                "pass rng=numpy.random.default_rng(seed)."
            )
        check_sample(image, target)
        for transform in self.transforms:
            image, target = transform(image, target, rng)
        return image, target

    def reset(self) -> None:
        for transform in self.transforms:
            if hasattr(transform, "reset"):
                transform.reset()

    def __repr__(self) -> str:
        return "Compose(" + " -> ".join(type(t).__name__ for t in self.transforms) + ")"


def stage1_pipeline(
    size: tuple[int, int] = (640, 640),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    mosaic_max_cached: int = 40,
    mosaic_random_pop: bool = True,
    mixup_max_cached: int = 20,
    mixup_random_pop: bool = True,
    mixup_prob: float = 1.0,
    mosaic: bool = True,
    mixup: bool = True,
) -> Compose:
    """The heavy pipeline: mosaic -> random resize -> crop -> HSV -> flip -> pad -> mixup -> filter.

    ``size`` (h, w) is the training canvas (640 official, 320 in the course); the mosaic canvas is twice it and
    the random resize scale is that canvas. ``REFERENCE_AUGMENT[name]`` holds the other arguments per model size.
    ``mosaic=False`` / ``mixup=False`` leave those steps out (mosaic is the slow one on a CPU, mmdetection #9508);
    without mosaic the resize scale is ``size`` itself. Chapter 07 builds this.
    """
    steps = [CachedMosaic(size, max_cached=mosaic_max_cached, random_pop=mosaic_random_pop)] if mosaic else []
    scale = (2 * size[0], 2 * size[1]) if mosaic else size
    steps += [RandomResizeCrop(scale, ratio_range, size), RandomHSV(), RandomFlip(0.5), Pad(size)]
    if mixup:
        steps.append(CachedMixUp(size, max_cached=mixup_max_cached, random_pop=mixup_random_pop, prob=mixup_prob))
    return Compose([*steps, FilterAnnotations((1, 1))])


def stage2_pipeline(size: tuple[int, int] = (640, 640), ratio_range: tuple[float, float] = (0.5, 2.0)) -> Compose:
    """The light pipeline of the last epochs: random resize -> crop -> HSV -> flip -> pad -> filter.

    Chapter 07 builds this.
    """
    return Compose(
        [
            RandomResizeCrop(size, ratio_range, size),
            RandomHSV(),
            RandomFlip(0.5),
            Pad(size),
            FilterAnnotations((1, 1)),
        ]
    )


def eval_pipeline(size: tuple[int, int] = (640, 640)) -> Compose:
    """Letterbox into ``size`` (keep ratio, grey padding at the bottom/right); nothing random.

    Chapter 07 builds this.
    """
    return Compose([LetterboxResize(size)])


class TwoStagePipeline:
    """Stage 1 until ``switch_epoch``, then stage 2 (the reference's PipelineSwitchHook). Chapter 07 builds this.

    Call ``set_epoch(epoch)`` before each epoch: the switch happens at the start of epoch index
    ``switch_epoch`` (280 of 300 in the reference).
    """

    def __init__(self, stage1: Compose, stage2: Compose, switch_epoch: int):
        self.stage1, self.stage2, self.switch_epoch, self.epoch = stage1, stage2, switch_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def current(self) -> Compose:
        return self.stage2 if self.epoch >= self.switch_epoch else self.stage1

    def __call__(self, image, target, rng: np.random.Generator):
        return self.current(image, target, rng)

    def reset(self) -> None:
        self.stage1.reset()
        self.stage2.reset()


def build_train_pipeline(
    image_size: int | tuple[int, int], stage: int = 1, mosaic: bool = True, mixup: bool = True, recipe: str = "s"
) -> Compose:
    """The pipeline of training stage 1 or 2 at a square ``image_size`` (or (h, w)) with a recipe's settings.

    Chapter 07 builds this.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if recipe not in REFERENCE_AUGMENT:
        raise ValueError(f"Unknown recipe {recipe!r}; choose one of {sorted(REFERENCE_AUGMENT)}.")
    settings = REFERENCE_AUGMENT[recipe]
    if stage == 1:
        return stage1_pipeline(size, **settings, mosaic=mosaic, mixup=mixup)
    if stage == 2:
        return stage2_pipeline(size, settings["ratio_range"])
    raise ValueError(f"stage must be 1 (mosaic + mixup) or 2 (the light pipeline), got {stage}.")


def train_pipeline(
    size: tuple[int, int] = (640, 640),
    max_epochs: int = 300,
    stage2_epochs: int = 20,
    recipe: str = "s",
    mosaic: bool = True,
    mixup: bool = True,
) -> TwoStagePipeline:
    """Both training stages with the switch ``stage2_epochs`` before the end (the reference: 20 of 300).

    Chapter 07 builds this.
    """
    return TwoStagePipeline(
        build_train_pipeline(size, 1, mosaic=mosaic, mixup=mixup, recipe=recipe),
        build_train_pipeline(size, 2, recipe=recipe),
        switch_epoch=max_epochs - stage2_epochs,
    )
