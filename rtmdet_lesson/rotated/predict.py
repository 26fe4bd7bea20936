"""``predict`` for RTMDet-R: raw images in, rotated boxes on the original images out (chapter 10).

The same steps as the axis-aligned ``predict.predict`` (chapter 08): any image kind and size, letterboxed onto
the model's square canvas, normalised, run under ``torch.inference_mode``; then ``rotated_postprocess``.
"""

from __future__ import annotations

import torch

from rtmdet_lesson.postprocess import InferenceConfig, resolve_config
from rtmdet_lesson.predict import _as_list, default_canvas_size, to_rgb_tensor
from rtmdet_lesson.preprocess import letterbox_image, normalize
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
    canvas = default_canvas_size(model) if canvas_size is None else canvas_size
    canvas = (canvas, canvas) if isinstance(canvas, int) else tuple(canvas)
    if canvas[0] % 32 or canvas[1] % 32:
        raise ValueError(f"canvas_size must be a multiple of 32 on both sides, got {canvas}; try 640 or 1024.")
    rgb = [to_rgb_tensor(image) for image in _as_list(images)]
    if device is not None:
        model.to(device)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    results = []
    try:
        with torch.inference_mode():
            for start in range(0, len(rgb), batch_size):
                boxed = [letterbox_image(image.to(param.device), canvas) for image in rgb[start : start + batch_size]]
                x = normalize(torch.stack([canvas_image for canvas_image, _ in boxed]))  # (B, 3, CH, CW)
                outputs = model(x.to(param.dtype))
                strides = tuple(getattr(model, "strides", (8, 16, 32)))
                results += rotated_postprocess(outputs, [box for _, box in boxed], cfg, strides)
    finally:
        if was_training:
            model.train()
    return results
