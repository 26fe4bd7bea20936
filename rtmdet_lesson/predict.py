"""``predict``: raw images in, instances out (chapter 08).

Takes images of any size and aspect as numpy ``(H, W, 3)`` uint8 RGB, Pillow images, torch uint8 tensors
``(3, H, W)`` or ``(H, W, 3)``, or file paths; letterboxes them onto the model's square canvas, normalises,
runs the network under ``torch.inference_mode`` and post-processes (``postprocess.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rtmdet_lesson.image_files import pil_to_rgb_array, read_rgb
from rtmdet_lesson.postprocess import InferenceConfig, Instances, decode_masks, postprocess, resolve_config
from rtmdet_lesson.preprocess import letterbox_image, normalize

__all__ = ["Instances", "InferenceConfig", "default_canvas_size", "predict", "to_rgb_tensor"]

DEFAULT_CANVAS = 640  # the official presets' test size, for models that do not say theirs


def default_canvas_size(model) -> tuple[int, int]:
    """The canvas ``predict`` letterboxes onto: ``model.input_size`` (every preset sets it), else 640."""
    size = getattr(model, "input_size", None) or DEFAULT_CANVAS
    return (size, size) if isinstance(size, int) else tuple(size)


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    if array.dtype != np.uint8:
        kind = "floats" if np.issubdtype(array.dtype, np.floating) else f"dtype {array.dtype}"
        raise ValueError(
            f"predict wants uint8 images with values 0-255, got {kind}; convert first, e.g. "
            "(image * 255).round().clip(0, 255).astype(np.uint8) for a 0-1 float image."
        )
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        raise ValueError(
            f"predict wants RGB images (H, W, 3), got a grayscale image of shape {array.shape}; convert it, "
            "e.g. np.repeat(image.reshape(H, W, 1), 3, axis=2) or PIL's image.convert('RGB')."
        )
    if array.ndim != 3:
        raise ValueError(f"predict wants one image (H, W, 3), got an array of shape {array.shape}.")
    if array.shape[2] == 4:
        raise ValueError(f"got an RGBA image of shape {array.shape}; drop the alpha channel: image[..., :3].")
    if array.shape[2] != 3:
        if array.shape[0] in (3, 4):
            raise ValueError(
                f"got a numpy array of shape {array.shape}, which looks channels-first; numpy images are "
                "(H, W, 3): use image.transpose(1, 2, 0)."
            )
        raise ValueError(f"predict wants RGB images (H, W, 3), got shape {array.shape}.")
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W); a copy: PIL arrays are read-only


def _from_tensor(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype != torch.uint8:
        raise ValueError(
            f"predict wants uint8 images with values 0-255, got dtype {tensor.dtype}; convert first, e.g. "
            "(image * 255).round().clamp(0, 255).to(torch.uint8) for a 0-1 float image."
        )
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
        chw = tensor  # (C, H, W)
    elif tensor.ndim == 3 and tensor.shape[2] in (1, 3, 4):
        chw = tensor.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    elif tensor.ndim == 2:
        chw = tensor[None]  # (1, H, W)
    else:
        raise ValueError(f"predict wants a (3, H, W) or (H, W, 3) tensor, got shape {tuple(tensor.shape)}.")
    if chw.shape[0] == 1:
        raise ValueError(
            f"predict wants RGB images, got a grayscale tensor of shape {tuple(tensor.shape)}; repeat it to 3 "
            "channels, e.g. image.reshape(1, H, W).expand(3, H, W)."
        )
    if chw.shape[0] == 4:
        raise ValueError(
            f"got an RGBA tensor of shape {tuple(tensor.shape)}; drop the alpha channel, e.g. image[:3] "
            "for (4, H, W) or image[..., :3] for (H, W, 4)."
        )
    return chw  # (3, H, W)


def to_rgb_tensor(image) -> torch.Tensor:
    """One image (numpy, Pillow, torch tensor or file path) -> uint8 RGB tensor ``(3, H, W)``, or a clear ValueError."""
    if isinstance(image, (str, Path)):
        image = read_rgb(image)  # (H, W, 3) uint8, 16-bit files scaled
    if isinstance(image, Image.Image):
        rgb = _from_numpy(pil_to_rgb_array(image))
    elif isinstance(image, np.ndarray):
        rgb = _from_numpy(image)
    elif isinstance(image, torch.Tensor):
        rgb = _from_tensor(image)
    else:
        raise ValueError(
            f"predict cannot read an image of type {type(image).__name__}; give a numpy (H, W, 3) uint8 array, "
            "a PIL image, a torch uint8 tensor or a file path."
        )
    if rgb.shape[1] == 0 or rgb.shape[2] == 0:
        raise ValueError(f"the image is empty (shape {tuple(rgb.shape)}); give an image with pixels in it.")
    return rgb


def _as_list(images) -> list:
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)  # a (B, 3, H, W) batch
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("predict got an empty list of images; give at least one image.")
        return list(images)
    return [images]


def predict(
    model,
    images,
    config: str | InferenceConfig = "eval",
    canvas_size: int | tuple[int, int] | None = None,
    device: torch.device | str | None = None,
    score_thr: float | None = None,
    batch_size: int = 8,
) -> list[Instances]:
    """Segment raw images with a model: one ``Instances`` per image, in original-image pixels. Chapter 08.

    Args:
        model: an ``RTMDet`` (or anything returning a ``HeadOutput``); it is put in eval mode for the call and
            moved to ``device`` if one is given.
        images: one image or a list (numpy ``(H, W, 3)`` uint8 RGB, PIL, torch uint8 ``(3, H, W)`` /
            ``(H, W, 3)``, a path); any size and aspect.
        config: ``"eval"`` (reference test settings), ``"deploy"`` (faster, fewer instances) or an
            ``InferenceConfig``; ``score_thr`` overrides its score threshold.
        canvas_size: square side or ``(H, W)``, multiples of 32; default ``default_canvas_size(model)``.
        batch_size: images per forward pass.

    Returns:
        A list with one ``Instances`` per input image (a list even for a single image).
    """
    cfg = resolve_config(config, score_thr)
    mask_decoder = getattr(model, "mask_decoder", decode_masks)  # an InferenceModel brings its faster one
    return run_on_images(model, images,
                         lambda outputs, boxes, strides: postprocess(outputs, boxes, cfg, strides, mask_decoder),
                         canvas_size, device, batch_size)


def run_on_images(model, images, decode, canvas_size=None, device=None, batch_size: int = 8) -> list:
    """What ``predict`` does around the network, for any decoder (chapter 10's rotated one too): check the
    canvas, letterbox and normalise raw images in batches, run ``model`` under ``torch.inference_mode`` and
    return ``decode(outputs, letterboxes, strides)``'s results, one per image, in order."""
    canvas = default_canvas_size(model) if canvas_size is None else canvas_size
    canvas = (canvas, canvas) if isinstance(canvas, int) else tuple(canvas)
    if min(canvas) < 32 or canvas[0] % 32 or canvas[1] % 32:
        raise ValueError(f"canvas_size must be a positive multiple of 32 on both sides, got {canvas}; try 320 or 640.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    rgb = [to_rgb_tensor(image) for image in _as_list(images)]
    if device is not None:
        model.to(device)
    param = next(model.parameters(), None)  # None: a model without torch weights (deploy.OnnxRuntimeModel)
    input_device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    was_training = model.training
    if was_training:  # model.eval() walks every module: skip it when there is nothing to switch
        model.eval()
    results = []
    try:
        with torch.inference_mode():
            for start in range(0, len(rgb), batch_size):
                boxed = [letterbox_image(image.to(input_device), canvas) for image in rgb[start : start + batch_size]]
                x = normalize(torch.stack([canvas_image for canvas_image, _ in boxed]))  # (B, 3, CH, CW)
                outputs = model(x.to(dtype))
                strides = tuple(getattr(model, "strides", (8, 16, 32)))
                results += decode(outputs, [box for _, box in boxed], strides)
    finally:
        if was_training:
            model.train()
    return results
