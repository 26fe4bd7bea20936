"""Mosaic and mixup with sample caches, as the reference's ``CachedMosaic`` and ``CachedMixUp`` (chapter 07).

Both steps (``mmdet/datasets/transforms/transforms.py``) mix the incoming sample with samples seen before, kept
in a small cache that the step owns. Each DataLoader worker has its own copy of the pipeline, so each worker
has its own caches, filled from the images that worker loads, as in the reference. Tensors are never modified
in place, so the cache holds references, not copies.
"""

from __future__ import annotations

import numpy as np
import torch

from rtmdet_lesson.data.transforms.geometry import (
    _resize_image,
    _resize_masks,
    crop_sample,
    hflip_sample,
    pad_sample,
    paste_,
    resize_sample,
)
from rtmdet_lesson.data.transforms.samples import with_masks
from rtmdet_lesson.preprocess import PAD_VALUE


class _Cache:
    """A bounded list of samples; past ``max_cached`` one leaves, at random (``random_pop``) or the oldest."""

    def __init__(self, max_cached: int, random_pop: bool):
        if max_cached < 1:
            raise ValueError(f"max_cached must be at least 1, got {max_cached}.")
        self.max_cached, self.random_pop, self.items = max_cached, random_pop, []

    def push(self, sample, rng: np.random.Generator) -> None:
        """Append ``sample``; when the cache overflows, drop one (an integer draw only with ``random_pop``)."""
        self.items.append(sample)
        if len(self.items) > self.max_cached:
            self.items.pop(int(rng.integers(len(self.items))) if self.random_pop else 0)

    def draw(self, rng: np.random.Generator):
        """One cached sample, uniformly at random (one integer draw)."""
        return self.items[int(rng.integers(len(self.items)))]

    def reset(self) -> None:
        self.items.clear()


class CachedMosaic:
    """Four images on a 2x canvas around a random centre.

    Each call first caches the incoming sample. While the cache holds <= 4 samples the input passes through
    unchanged; after that the input goes top-left and three random cached samples (possibly itself) go top-right,
    bottom-left and bottom-right. Each is resized to fit ``size`` (keep ratio) and placed with a corner on the
    centre (cx, cy) = U(center_ratio_range) * (w, h); the canvas is (2h, 2w), grey 114 where nothing lands.
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
        others = [self.cache.draw(rng) for _ in range(3)]
        h, w = self.size
        cx = int(rng.uniform(*self.center_ratio_range) * w)
        cy = int(rng.uniform(*self.center_ratio_range) * h)
        canvas = torch.full((3, 2 * h, 2 * w), self.pad_value, dtype=torch.uint8, device=image.device)
        pieces = []  # (top, left, masks (G_i, h_i, w_i), labels (G_i,)) per quadrant
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
    """Blend the sample 50/50 with a cached one and keep both sets of instances.

    The cache holds samples that already went through the pipeline (post mosaic, crop and pad), so one output
    can mix eight source images. While the cache holds <= 1 sample the input passes through. The partner is
    drawn up to ``max_iters`` times until it has instances (else: pass through). It is resized to fit ``size``
    (keep ratio) onto a grey canvas, scaled by U(ratio_range), flipped when a uniform draw > ``flip_ratio``
    (the reference's rule), then a random window of the input's size is cut from it. Unlike the reference,
    the partner's masks are flipped on the same canvas as its image, so they stay aligned for any input size.
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
            other_image, other_target = self.cache.draw(rng)
            if len(other_target["labels"]) > 0:
                break
        if len(other_target["labels"]) == 0:
            return image, target
        jitter = rng.uniform(*self.ratio_range)
        flip = rng.uniform() > self.flip_ratio
        other = self._partner(other_image, other_target, jitter, flip)
        th, tw = image.shape[1:]
        other = pad_sample(*other, (max(th, other[0].shape[1]), max(tw, other[0].shape[2])), self.pad_value)
        top = int(rng.integers(0, other[0].shape[1] - th + 1))
        left = int(rng.integers(0, other[0].shape[2] - tw + 1))
        other_image, other_target = crop_sample(*other, top, left, th, tw)
        mixed = (0.5 * image.float() + 0.5 * other_image.float()).to(torch.uint8)  # truncates, as the reference
        masks = torch.cat([target["masks"], other_target["masks"]])  # (G + G', H, W)
        labels = torch.cat([target["labels"], other_target["labels"]])
        return mixed, with_masks(target, masks, labels)

    def _partner(self, image: torch.Tensor, target: dict, jitter: float, flip: bool):
        """The partner fitted (keep ratio) onto the grey ``size`` canvas, scaled by ``jitter``, maybe mirrored."""
        h, w = self.size
        oh, ow = image.shape[1:]
        factor = min(h / oh, w / ow)
        other = resize_sample(image, target, (int(oh * factor), int(ow * factor)))
        other = pad_sample(*other, (h, w), self.pad_value)
        if jitter != 1.0:
            other = resize_sample(*other, (int(h * jitter), int(w * jitter)))
        return hflip_sample(*other) if flip else other
