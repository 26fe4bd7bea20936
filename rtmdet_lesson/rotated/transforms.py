"""Training augmentation for rotated boxes: letterbox, flips and quarter turns that carry the angle (chapter 10).

mmrotate's ``configs/rotated_rtmdet/_base_/dota_rr.py`` trains RTMDet-R with: resize to 1024 keeping the
ratio, ``RandomFlip(prob=0.75, direction=['horizontal', 'vertical', 'diagonal'])`` (each direction 0.25),
``RandomRotate(prob=0.5, angle_range=180, rect_obj_labels=[9, 11])`` (any angle, quarter turns only for
images with storage tanks or roundabouts), and padding to 1024 with grey 114. Here the same letterbox and flips,
and quarter turns in place of any-angle rotation: the sprites already come at every angle, and a quarter turn
needs no resampling and loses no corner of the image. Left out: any-angle rotation, and what other configs add
(the ``_ms`` configs' multi-scale data splits, the ``-100e-aug`` configs' mosaic and mixup from
``_base_/dota_mixup_mosaic.py``); the ``3x-dota`` recipe itself has no mosaic and no mixup.

Every step maps ``(image uint8 (3, H, W), target) -> (image, target)`` with ``target["rboxes"]`` (G, 5)
(cx, cy, w, h, angle) and ``target["labels"]`` (G,); boxes come out regularised to le90.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rtmdet_lesson.data.transforms.samples import check_image
from rtmdet_lesson.preprocess import letterbox_image
from rtmdet_lesson.rotated.geometry import regularize_le90

FLIP_DIRECTIONS = ("horizontal", "vertical", "diagonal")
KEEP = ("rboxes", "labels", "difficult", "image_id")  # what training needs from a DOTA target


def check_rotated_sample(image: torch.Tensor, target: dict) -> None:
    """Raise a ValueError unless ``(image, target)`` is a rotated sample: uint8 (3, H, W) and rboxes (G, 5).

    The image is checked as the axis-aligned pipelines check it (``data.transforms.check_image``).
    """
    check_image(image, fix="read it as DotaDataset does")
    rboxes, labels = target.get("rboxes"), target.get("labels")
    if not isinstance(rboxes, torch.Tensor) or rboxes.ndim != 2 or rboxes.shape[1] != 5:
        raise ValueError("the target needs 'rboxes' (G, 5) as cx, cy, w, h, angle; see rotated/dota.py")
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(rboxes),):
        raise ValueError(f"the target needs one label per box: {len(rboxes)} boxes, labels "
                         f"{None if labels is None else tuple(labels.shape)}")


def letterbox_rotated(image: torch.Tensor, target: dict, canvas_size: tuple[int, int]):
    """Keep-ratio resize into a padded canvas, as ``predict`` does (``preprocess.letterbox_image``).

    Centres move with the image; each side is scaled by the length its direction gets, as
    ``postprocess.rboxes_to_original`` undoes it. Returns (image, target, Letterbox).
    """
    canvas, box = letterbox_image(image, canvas_size)
    fx, fy = box.scale_x, box.scale_y
    r = target["rboxes"]
    cos, sin = torch.cos(r[:, 4]), torch.sin(r[:, 4])
    scaled = torch.stack([
        r[:, 0] * fx + box.pad_left,
        r[:, 1] * fy + box.pad_top,
        r[:, 2] * torch.sqrt((fx * cos) ** 2 + (fy * sin) ** 2),
        r[:, 3] * torch.sqrt((fx * sin) ** 2 + (fy * cos) ** 2),
        torch.atan2(fy * sin, fx * cos),
    ], dim=1)  # (G, 5)
    return canvas, {**target, "rboxes": regularize_le90(scaled)}, box


def flip_rotated(image: torch.Tensor, target: dict, direction: str):
    """Mirror a sample: "horizontal" (x -> W - x, angle -> -angle), "vertical" (y -> H - y, angle -> -angle)
    or "diagonal" (both: a half turn, the angle stays). As mmrotate's ``RotatedBoxes.flip_``."""
    if direction not in FLIP_DIRECTIONS:
        raise ValueError(f"flip direction must be one of {FLIP_DIRECTIONS}, got {direction!r}")
    h, w = image.shape[1:]
    r = target["rboxes"].clone()
    if direction in ("horizontal", "diagonal"):
        image, r[:, 0] = image.flip(2), w - r[:, 0]
    if direction in ("vertical", "diagonal"):
        image, r[:, 1] = image.flip(1), h - r[:, 1]
    if direction != "diagonal":
        r[:, 4] = -r[:, 4]
    return image, {**target, "rboxes": regularize_le90(r)}


def quarter_turn(image: torch.Tensor, target: dict, turns: int):
    """Turn a sample by ``turns`` quarter turns clockwise on screen (y points down). (3, H, W) -> (3, W, H) for
    odd turns. One turn maps a point (x, y) to (H - y, x) and adds pi/2 to the angle."""
    r = target["rboxes"].clone()
    for _ in range(turns % 4):
        h = image.shape[1]
        image = image.flip(1).transpose(1, 2)  # (3, H, W) -> (3, W, H): new[x, H-1-y] = old[y, x]
        r = torch.stack([h - r[:, 1], r[:, 0], r[:, 2], r[:, 3], r[:, 4] + math.pi / 2], dim=1)
    return image.contiguous(), {**target, "rboxes": regularize_le90(r)}


def drop_tiny(target: dict, min_side: float = 1.0) -> dict:
    """Remove boxes (G, 5) with a side under ``min_side`` px (a sliver the letterbox shrank), with every other
    per-box tensor of the target (labels, difficult); the role of mmdetection's ``FilterAnnotations``."""
    keep = (target["rboxes"][:, 2] >= min_side) & (target["rboxes"][:, 3] >= min_side)
    return {k: v[keep] if torch.is_tensor(v) and v.ndim and len(v) == len(keep) else v for k, v in target.items()}


class RotatedTrainPipeline:
    """``pipeline(image, target, rng) -> (image (3, S, S), target)``: letterbox, a flip with probability
    ``flip_prob`` (the three directions equally likely) and, with probability ``turn_prob``, 1 to 3 quarter
    turns. Chapter 10 uses it; ``train`` builds it for rotated presets."""

    def __init__(self, size: tuple[int, int], flip_prob: float = 0.75, turn_prob: float = 0.5):
        if size[0] != size[1] and turn_prob > 0:
            raise ValueError(f"quarter turns need a square canvas, got {size}; use turn_prob=0")
        self.size, self.flip_prob, self.turn_prob = tuple(size), flip_prob, turn_prob

    def __call__(self, image, target, rng: np.random.Generator):
        check_rotated_sample(image, target)
        target = {k: target[k] for k in KEEP if k in target}
        image, target, _ = letterbox_rotated(image, target, self.size)
        if rng.random() < self.flip_prob:
            image, target = flip_rotated(image, target, FLIP_DIRECTIONS[int(rng.integers(3))])
        if rng.random() < self.turn_prob:
            image, target = quarter_turn(image, target, int(rng.integers(1, 4)))
        return image, drop_tiny(target)

    def __repr__(self) -> str:
        return f"RotatedTrainPipeline(letterbox {self.size}, flip {self.flip_prob}, quarter turns {self.turn_prob})"
