"""Saving and loading this package's checkpoints (chapters 07 and 08).

A checkpoint is one ``torch.save`` of a plain dict: ``preset`` (str), ``num_classes`` (int), ``class_names``
(list of str), ``settings`` (the ``RTMDet`` arguments, ``model.settings``, so that presets built with
overrides come back as they were), ``model`` (the state_dict) and any extra entries the caller adds (epoch,
optimizer state, ``label_to_category_id``, metrics...). It is written atomically: to a temporary
file in the same folder, then renamed over the target, so a crash never leaves half a checkpoint behind
(a temporary file left by a killed process is removed by the next save to the same path). No file holds a
non-finite tensor: ``save_checkpoint`` refuses to write one, and ``load_checkpoint`` refuses to read one.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

FORMAT = "rtmdet_lesson/1"  # marks our files; lets load_checkpoint tell them from other .pth files


def non_finite_tensors(value, prefix: str = "") -> list[str]:
    """The names of the floating-point tensors holding an inf or a NaN anywhere inside nested dicts and lists."""
    if torch.is_tensor(value):
        return [prefix or "tensor"] if value.is_floating_point() and not bool(torch.isfinite(value).all()) else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return []
    return [name for key, item in items for name in non_finite_tensors(item, f"{prefix}.{key}" if prefix else str(key))]


def _describe(names: list[str]) -> str:
    return f"{len(names)} tensor(s) hold inf or NaN (first: {names[0]})"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, model, class_names: list[str] | None = None, half: bool = False, **extra) -> Path:
    """Write ``model`` with what is needed to rebuild it to ``path``; ``half=True`` stores float weights as fp16.

    ``class_names`` defaults to ``model.class_names``. Extra keyword arguments are stored as they are.
    """
    path = Path(path)
    class_names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = non_finite_tensors(state) + non_finite_tensors(extra)
    if bad:
        raise ValueError(f"not writing {path}: {_describe(bad)}; the model has diverged (a lower learning rate "
                         "usually helps)")
    if half:
        halved = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        overflow = non_finite_tensors(halved)
        if overflow:  # values beyond fp16's 65504 would turn into inf
            warnings.warn(f"{path}: {_describe(overflow)} in fp16, so the weights are kept in fp32", stacklevel=2)
        else:
            state = halved
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
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(error, path.parent):
            raise OSError(errno.ENOSPC, f"no space left on the disk while writing {path} "
                                        f"({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free); free some "
                                        "space and try again (the previous file, if any, is unchanged)") from error
        raise
    return path


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC, or torch's zip writer's "unexpected pos" on a full disk."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return isinstance(error, RuntimeError) and "unexpected pos" in str(error) and shutil.disk_usage(folder).free < 2**26


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read one of our checkpoint files as a dict, with clear errors for missing or foreign files."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; give a checkpoint file inside it (e.g. last.pth)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; check the path (train one with "
                                "`python -m rtmdet_lesson train`).")
    if path.stat().st_size == 0:
        raise ValueError(f"{str(path)!r} is empty (0 bytes): an interrupted copy or download? Copy it again.")
    if path.suffix == ".onnx":
        raise ValueError(f"{str(path)!r} is an exported ONNX model, not a checkpoint; run it with --backend "
                         "onnxruntime (rtmdet_lesson.deploy.load_onnx_model) or give the .pth it was exported from")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # the weights-only unpickler raises many kinds on foreign files
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"{str(path)!r} is not a checkpoint written by rtmdet_lesson (torch.load failed: {reason}). An "
            "official mmdetection checkpoint loads with "
            "rtmdet_lesson.official_weights.load_mmdet_checkpoint(build_model(...), path)."
        ) from error
    if isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT:
        bad = non_finite_tensors(checkpoint)
        if bad:
            raise ValueError(f"{str(path)!r} cannot be used: {_describe(bad)}; it was written by a run that "
                             "diverged. Use an earlier checkpoint of that run, or train again with a lower lr")
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
    from rtmdet_lesson.rotated.model import RTMDetR

    rotated = any(key.startswith("head.rtm_ang.") for key in checkpoint["model"])  # RTMDet-R (chapter 10)
    model = (RTMDetR if rotated else RTMDet)(preset=checkpoint["preset"], **checkpoint["settings"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint["model"].items()})
    model.class_names = list(checkpoint["class_names"]) or None
    model.label_to_category_id = category_ids(checkpoint)
    if device is not None:
        model.to(device)
    return model.eval()


def category_ids(checkpoint: dict) -> dict[int, int]:
    """The dataset's category id of every label: the checkpoint's ``label_to_category_id``, or 1..C for files
    written before it was stored (the sprites' ids, and what those files' predictions always used)."""
    stored = checkpoint.get("label_to_category_id") or {label: label + 1 for label in range(checkpoint["num_classes"])}
    return {int(label): int(category) for label, category in stored.items()}


def load_checkpoint_model(path: str | Path, device: torch.device | str | None = None):
    """Rebuild the model a checkpoint file was saved from, in fp32 and eval mode, with ``class_names`` set."""
    return model_from_checkpoint(load_checkpoint(path), device)
