"""``predict`` for RTMDet-R: raw images in, rotated boxes on the original images out (chapter 10).

The same steps as the axis-aligned ``predict.predict`` (chapter 08): any image kind and size, letterboxed onto
the model's square canvas, normalised, run under ``torch.inference_mode`` (``predict.run_on_images``); then
``rotated_postprocess``.
"""

from __future__ import annotations

import torch

from rtmdet_lesson.postprocess import InferenceConfig, resolve_config
from rtmdet_lesson.predict import run_on_images
from rtmdet_lesson.rotated.postprocess import ROTATED_EVAL, RotatedInstances, rotated_postprocess


def predict_rotated(
    model,
    images,
    config: InferenceConfig = ROTATED_EVAL,
    canvas_size: int | tuple[int, int] | None = None,
    device: torch.device | str | None = None,
    score_thr: float | None = None,
    batch_size: int = 8,
) -> list[RotatedInstances]:
    """Rotated boxes on raw images: one ``RotatedInstances`` per image, in original-image pixels. Chapter 10.

    Args:
        model: an ``RTMDetR``; it is put in eval mode for the call and moved to ``device`` if one is given.
        images: one image or a list (numpy ``(H, W, 3)`` uint8 RGB, PIL, torch uint8 ``(3, H, W)`` /
            ``(H, W, 3)``, a path); any size and aspect.
        config: an ``InferenceConfig``, by default the reference's test settings (``ROTATED_EVAL``);
            ``score_thr`` overrides its score threshold.
        canvas_size: square side or ``(H, W)``, multiples of 32; default ``model.input_size``.
        batch_size: images per forward pass.
    """
    cfg = resolve_config(config, score_thr)
    return run_on_images(model, images,
                         lambda outputs, boxes, strides: rotated_postprocess(outputs, boxes, cfg, strides),
                         canvas_size, device, batch_size)


def rotated_results(found, image_id: int, label_to_category_id: dict[int, int], class_names=None) -> list[dict]:
    """One image's ``RotatedInstances`` as result dicts: ``image_id``, ``category_id``, ``class_name``, ``score``,
    ``rbox`` (cx, cy, w, h, angle) and ``poly`` (the four corners, x1 y1 ... x4 y4), as ``predict`` writes them."""
    from rtmdet_lesson.rotated.geometry import rbox_to_corners

    corners = rbox_to_corners(found.rboxes.double()).reshape(-1, 8)  # (K, 8) x1 y1 ... x4 y4
    names = class_names or []
    return [{"image_id": image_id, "category_id": label_to_category_id[int(label)],
             "class_name": names[int(label)] if names else None, "score": round(float(score), 5),
             "rbox": [round(float(v), 3) for v in rbox], "poly": [round(float(v), 2) for v in poly]}
            for rbox, poly, label, score in zip(found.rboxes, corners, found.labels, found.scores, strict=True)]
