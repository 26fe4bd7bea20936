"""From RTMDet-R's raw outputs to rotated boxes on the original image (chapter 10).

Per image, in the reference's order (mmrotate's ``RotatedRTMDetHead`` through mmdetection's
``_predict_by_feat_single``), with its test config (``rotated_rtmdet_*-3x-dota.py``: ``nms_pre=2000``,
``score_thr=0.05``, ``nms_rotated`` IoU 0.1, ``max_per_img=2000``, ``min_bbox_size=0``):

1. sigmoid the class logits; on each level keep the (prior, class) pairs above ``score_thr`` and of those the
   ``nms_pre`` best (``postprocess.select_candidates``, shared with the axis-aligned model);
2. decode their rotated boxes from the prior points, distances and angles (no clipping: a rotated box has
   no clean way to be clipped to the image) and map them to original pixels;
3. drop boxes with a side <= 0, class-aware rotated NMS, then the ``max_per_img`` best.

Boxes come out in le90 (width the longer side, angle in [-pi/2, pi/2)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rtmdet_lesson.postprocess import (
    InferenceConfig,
    check_letterboxes,
    gather_priors,
    resolve_config,
    select_candidates,
)
from rtmdet_lesson.preprocess import Letterbox
from rtmdet_lesson.priors import grid_priors
from rtmdet_lesson.rotated.coder import distance_angle_to_rbox
from rtmdet_lesson.rotated.geometry import regularize_le90
from rtmdet_lesson.rotated.nms import batched_rotated_nms

ROTATED_EVAL = InferenceConfig(score_thr=0.05, nms_pre=2000, iou_threshold=0.1, max_per_img=2000)
"""The reference's test settings for RTMDet-R (``mask_thr`` is unused)."""


@dataclass
class RotatedInstances:
    """What RTMDet-R's ``predict`` returns for one image (chapter 10).

    rboxes (K, 5) (cx, cy, w, h, angle) in original-image pixels, le90; scores (K,); labels (K,) int64 from 0;
    letterbox: how the image was placed on the canvas; prior_index (K,): the prior (row of ``grid_priors``)
    that predicted each box.
    """

    rboxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    letterbox: Letterbox
    prior_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.rboxes.shape[0]


def rboxes_to_original(rboxes: torch.Tensor, letterbox: Letterbox) -> torch.Tensor:
    """Map rotated boxes (K, 5) from canvas pixels back to original-image pixels. Chapter 10.

    Undoing the letterbox scales x by ``1 / scale_x`` and y by ``1 / scale_y``. Each side is scaled by the
    length its direction gets (the w side (cos a, sin a) becomes (cos a / scale_x, sin a / scale_y)) and the
    angle is that of the scaled w side. A keep-ratio letterbox has scale_x = scale_y up to rounding, so the
    result is a rectangle; with unequal scales a rotated rectangle turns into a parallelogram and this is the
    rectangle with the scaled sides. (mmrotate's ``RotatedBoxes.rescale_`` takes the angle as
    atan2(scale_x sin a, scale_y cos a), which equals this one only when the two scales are equal.)
    """
    fx, fy = 1 / letterbox.scale_x, 1 / letterbox.scale_y
    cx = (rboxes[:, 0] - letterbox.pad_left) * fx
    cy = (rboxes[:, 1] - letterbox.pad_top) * fy
    cos, sin = torch.cos(rboxes[:, 4]), torch.sin(rboxes[:, 4])
    w = rboxes[:, 2] * torch.sqrt((fx * cos) ** 2 + (fy * sin) ** 2)
    h = rboxes[:, 3] * torch.sqrt((fx * sin) ** 2 + (fy * cos) ** 2)
    angle = torch.atan2(fy * sin, fx * cos)
    return torch.stack([cx, cy, w, h, angle], dim=1)  # (K, 5)


def _empty(letterbox: Letterbox, like: torch.Tensor) -> RotatedInstances:
    long = torch.zeros(0, dtype=torch.int64, device=like.device)
    return RotatedInstances(like.new_zeros(0, 5), like.new_zeros(0), long, letterbox, long)


def rotated_postprocess(
    outputs,
    letterboxes: list[Letterbox],
    config: str | InferenceConfig = ROTATED_EVAL,
    strides: tuple[int, ...] = (8, 16, 32),
) -> list[RotatedInstances]:
    """Raw ``RotatedHeadOutput`` of a batch -> one ``RotatedInstances`` per image. Chapter 10 builds this.

    ``letterboxes[i]`` says how image ``i`` was placed on the canvas. ``config`` is an ``InferenceConfig``
    (default ``ROTATED_EVAL``, the reference's); ``"eval"`` or ``"deploy"`` pick the axis-aligned model's.
    """
    cfg = resolve_config(config)
    cls_scores, bbox_preds, angle_preds = outputs.cls_scores, outputs.bbox_preds, outputs.angle_preds
    if angle_preds is None:
        raise ValueError("these outputs have no angle_preds; rotated_postprocess needs an RTMDet-R model's outputs")
    check_letterboxes(cls_scores, letterboxes, strides)
    sizes = [tuple(s.shape[-2:]) for s in cls_scores]
    priors = grid_priors(sizes, strides, device=bbox_preds[0].device, dtype=bbox_preds[0].dtype)  # (N, 4)
    results = []
    for i, letterbox in enumerate(letterboxes):
        prior_index, labels, scores = select_candidates([s[i] for s in cls_scores], cfg.score_thr, cfg.nms_pre)
        if prior_index.numel() == 0:
            results.append(_empty(letterbox, priors))
            continue
        distances = gather_priors([p[i] for p in bbox_preds], prior_index)  # (M, 4)
        angles = gather_priors([a[i] for a in angle_preds], prior_index)[:, 0]  # (M,)
        rboxes = distance_angle_to_rbox(priors[prior_index, :2], distances, angles)  # (M, 5) canvas pixels
        valid = (rboxes[:, 2] > 0) & (rboxes[:, 3] > 0)  # min_bbox_size 0: drop boxes with a side <= 0
        prior_index, labels, scores, rboxes = prior_index[valid], labels[valid], scores[valid], rboxes[valid]
        rboxes = regularize_le90(rboxes_to_original(rboxes, letterbox))  # (M, 5) original pixels
        keep = batched_rotated_nms(rboxes, scores, labels, cfg.iou_threshold, max_keep=cfg.max_per_img)  # (K,)
        results.append(RotatedInstances(rboxes[keep], scores[keep], labels[keep], letterbox, prior_index[keep]))
    return results
