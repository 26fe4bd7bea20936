"""Saving and loading this package's checkpoints (chapters 07 and 08).

A checkpoint is one ``torch.save`` of a plain dict: ``preset`` (str), ``num_classes`` (int), ``class_names``
(list of str), ``settings`` (the ``RTMDet`` arguments, ``model.settings``, so that presets built with
overrides come back as they were), ``model`` (the state_dict) and any extra entries the caller adds (epoch,
optimizer state, ``label_to_category_id``, metrics...). It is written atomically: to a temporary
file in the same folder, then renamed over the target, so a crash never leaves half a checkpoint behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "rtmdet_lesson/1"  # marks our files; lets load_checkpoint tell them from other .pth files


def save_checkpoint(path: str | Path, model, class_names: list[str] | None = None, half: bool = False, **extra) -> Path:
    """Write ``model`` with what is needed to rebuild it to ``path``; ``half=True`` stores float weights as fp16.

    ``class_names`` defaults to ``model.class_names``. Extra keyword arguments are stored as they are.
    """
    path = Path(path)
    class_names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    settings = dict(model.settings)
    if "input_size" in settings:  # training may set the canvas after building the model
        settings["input_size"] = model.input_size
    checkpoint = {
        "format": FORMAT,
        "preset": model.preset,
        "num_classes": int(model.num_classes),
        "class_names": class_names,
        "settings": settings,
        "model": state,
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read one of our checkpoint files as a dict, with clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; check the path (train one with "
                                "`python -m rtmdet_lesson train`).")
    if path.suffix == ".onnx":
        raise ValueError(f"{str(path)!r} is an exported ONNX model, not a checkpoint; run it with --backend "
                         "onnxruntime (rtmdet_lesson.deploy.load_onnx_model) or give the .pth it was exported from")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # the weights-only unpickler raises many kinds on foreign files
        raise ValueError(
            f"{str(path)!r} is not a checkpoint written by rtmdet_lesson (torch.load failed: "
            f"{str(error).splitlines()[0]}). An official mmdetection checkpoint loads with "
            "rtmdet_lesson.official_weights.load_mmdet_checkpoint(build_model(...), path)."
        ) from error
    if isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT:
        return checkpoint
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        hint = ("it looks like an mmdetection checkpoint; load it with "
                "rtmdet_lesson.official_weights.load_mmdet_checkpoint(build_model(PRESET, num_classes), path).")
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        hint = "it is a bare state_dict; build the model with build_model(PRESET, ...) and call load_state_dict."
    else:
        hint = "save models with rtmdet_lesson.checkpoint.save_checkpoint."
    raise ValueError(f"{str(path)!r} is not a checkpoint written by rtmdet_lesson: {hint}")


def model_from_checkpoint(checkpoint: dict, device: torch.device | str | None = None):
    """Rebuild a model from a dict ``load_checkpoint`` returned: fp32, eval mode, ``class_names`` set."""
    from rtmdet_lesson.model import RTMDet

    model = RTMDet(preset=checkpoint["preset"], **checkpoint["settings"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint["model"].items()})
    model.class_names = list(checkpoint["class_names"]) or None
    if device is not None:
        model.to(device)
    return model.eval()


def load_checkpoint_model(path: str | Path, device: torch.device | str | None = None):
    """Rebuild the model a checkpoint file was saved from, in fp32 and eval mode, with ``class_names`` set."""
    return model_from_checkpoint(load_checkpoint(path), device)
