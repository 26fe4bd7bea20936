"""Mask-aware augmentation: the reference's training pipelines, built from small steps (chapter 07).

Every step maps a sample ``(image uint8 (3, H, W), target)`` to a new one and keeps two rules: boxes are
recomputed from the masks, and an instance whose mask became empty leaves with its label (``samples``). Random
steps are small classes called as ``t(image, target, rng)`` with an explicit ``numpy.random.Generator``, so the
same generator state gives the same augmentations, which is what makes an interrupted run resumable exactly.

- ``samples``: the sample contract, ``masks_to_boxes``, ``with_masks`` and the annotation filter;
- ``geometry``: resize, crop, flip, pad, letterbox, and ``RandomResize``, ``RandomCrop``, ``RandomFlip``, ...;
- ``colour``: RGB <-> HSV in OpenCV units, ``hsv_shift`` and ``RandomHSV``;
- ``mix``: ``CachedMosaic`` and ``CachedMixUp``;
- ``pipeline``: ``Compose``, ``build_train_pipeline`` (stage 1 or 2), ``train_pipeline`` (both, with the switch)
  and ``eval_pipeline``.

``from rtmdet_lesson.data import transforms as T`` gives all of them.
"""

from rtmdet_lesson.data.transforms.colour import RandomHSV, hsv_shift, hsv_to_rgb, rgb_to_hsv
from rtmdet_lesson.data.transforms.geometry import (
    LetterboxResize,
    Pad,
    RandomCrop,
    RandomFlip,
    RandomResize,
    RandomResizeCrop,
    crop_sample,
    hflip_sample,
    letterbox_sample,
    pad_sample,
    paste_,
    resize_crop_sample,
    resize_sample,
)
from rtmdet_lesson.data.transforms.mix import CachedMixUp, CachedMosaic
from rtmdet_lesson.data.transforms.pipeline import (
    REFERENCE_AUGMENT,
    Compose,
    TwoStagePipeline,
    build_train_pipeline,
    eval_pipeline,
    train_pipeline,
)
from rtmdet_lesson.data.transforms.samples import (
    FilterAnnotations,
    check_image,
    check_sample,
    filter_annotations,
    masks_to_boxes,
    with_masks,
)

__all__ = [
    "REFERENCE_AUGMENT",
    "CachedMixUp",
    "CachedMosaic",
    "Compose",
    "FilterAnnotations",
    "LetterboxResize",
    "Pad",
    "RandomCrop",
    "RandomFlip",
    "RandomHSV",
    "RandomResize",
    "RandomResizeCrop",
    "TwoStagePipeline",
    "build_train_pipeline",
    "check_image",
    "check_sample",
    "crop_sample",
    "eval_pipeline",
    "filter_annotations",
    "hflip_sample",
    "hsv_shift",
    "hsv_to_rgb",
    "letterbox_sample",
    "masks_to_boxes",
    "pad_sample",
    "paste_",
    "resize_crop_sample",
    "resize_sample",
    "rgb_to_hsv",
    "train_pipeline",
    "with_masks",
]
