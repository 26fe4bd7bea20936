"""Load official mmdetection RTMDet / RTMDet-Ins checkpoints, and write that layout back (chapter 03).

Official weights expect **BGR** input normalised with ``preprocess.MEAN_BGR`` / ``preprocess.STD_BGR``
(``preprocess.normalize`` does both from RGB uint8), letterboxed to 640x640 with pad value 114.

Our layer names equal the reference's everywhere except in the head, so the mapping is short:

| reference key (mmdetection)                  | ours                                  |
|----------------------------------------------|---------------------------------------|
| ``backbone.*``, ``neck.*``                   | same                                  |
| ``bbox_head.cls_convs.{level}.{i}.conv.weight`` | ``head.cls_tower.convs.{i}.weight`` (one shared conv) |
| ``bbox_head.cls_convs.{level}.{i}.bn.*``     | ``head.cls_tower.norms.{level}.{i}.*`` |
| ``bbox_head.reg_convs.*``                    | ``head.reg_tower.*`` likewise; in the default Ins head the cls tower |
| every other ``bbox_head.*``                  | ``head.*``                            |

mmrotate's RTMDet-R checkpoints (``RotatedRTMDetSepBNHead``) load the same way into ``build_model("rtmdet-r-*")``
(chapter 10): their head adds the per-level ``bbox_head.rtm_ang.{level}``, which maps like every other head key.

The reference stores some tensors several times: a shared tower conv under every level, and in RTMDet-Ins
the whole ``reg_convs`` tree again (it is the cls tower, see ``head.py``). Loading checks that all copies
are equal and raises if not; exporting writes every copy. Keys that are not network weights are skipped:
``data_preprocessor.*`` (mean/std buffers), mmdet 2.x EMA copies named ``ema_*``, and ``steps`` of an EMA
state_dict; a ``module.`` prefix (DDP or ``checkpoint["ema_state_dict"]``) is stripped.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rtmdet_lesson.checkpoint import FORMAT

SKIPPED_PREFIXES = ("data_preprocessor.", "ema_")
SKIPPED_KEYS = ("steps",)
MAX_LISTED = 40  # problems listed in an error; a wrong preset gives hundreds
_TOWER = re.compile(r"head\.(cls|reg)_tower\.(?:convs\.(\d+)\.weight|norms\.(\d+)\.(\d+)\.(\w+))")


def reference_keys(model: nn.Module, key: str) -> list[str]:
    """All reference (mmdetection) names of one of our state_dict keys. Chapter 03."""
    if not key.startswith("head."):
        return [key]
    match = _TOWER.fullmatch(key)
    if match is None:
        return ["bbox_head." + key.removeprefix("head.")]
    tower, conv_index, level, norm_index, field = match.groups()
    names = [tower] if tower == "reg" or model.head.reg_tower is not None else ["cls", "reg"]
    if conv_index is not None:  # one shared conv, stored under every level
        return [
            f"bbox_head.{name}_convs.{lvl}.{conv_index}.conv.weight"
            for name in names
            for lvl in range(len(model.strides))
        ]
    return [f"bbox_head.{name}_convs.{level}.{norm_index}.bn.{field}" for name in names]


def export_mmdet_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights in the reference layout, duplicates included, as an official checkpoint stores them."""
    return {ref: value for key, value in model.state_dict().items() for ref in reference_keys(model, key)}


def _read(path_or_state_dict) -> Mapping[str, torch.Tensor]:
    if isinstance(path_or_state_dict, Mapping):
        state = path_or_state_dict
    else:
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}; download an official RTMDet .pth file first")
        if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
            raise ValueError(f"{path} is not a PyTorch checkpoint (not the zip archive torch.save writes); "
                             "check that the download or copy is complete")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path} holds Python objects besides tensors, so it was not unpickled (that could run code); "
                "if you trust the file, load it with torch.load(path, weights_only=False) and pass its "
                "['state_dict']"
            ) from error
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a checkpoint dict or a state_dict, got a {type(state).__name__}")
    if state.get("format") == FORMAT:
        raise ValueError("this is a checkpoint written by rtmdet_lesson, not an official one; load it with "
                         "rtmdet_lesson.checkpoint.load_checkpoint_model(path)")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {
        key.removeprefix("module."): value
        for key, value in state.items()
        if not key.startswith(SKIPPED_PREFIXES) and key not in SKIPPED_KEYS
    }


def load_mmdet_checkpoint(model: nn.Module, path_or_state_dict) -> nn.Module:
    """Load an official mmdetection RTMDet or RTMDet-Ins checkpoint into ``model``. Chapter 03 uses this.

    Args:
        model: a model from ``build_model`` of the matching preset (e.g. ``rtmdet-ins-tiny`` for
            ``rtmdet-ins_tiny_8xb32-300e_coco.pth``) with the checkpoint's number of classes (80 for COCO).
        path_or_state_dict: a ``.pth`` file holding ``{"state_dict": ...}`` or a bare state_dict, or the dict.

    Returns:
        ``model``, loaded. Feed it BGR images normalised with ``preprocess.MEAN_BGR``/``STD_BGR``.

    Raises:
        ValueError naming every missing, unexpected or wrongly shaped key, or copies of a shared tensor
        that differ.
    """
    given = _read(path_or_state_dict)
    ours = model.state_dict()
    wanted = {ref: key for key in ours for ref in reference_keys(model, key)}  # reference name -> our key
    problems = [f"missing: {ref} {tuple(ours[key].shape)}" for ref, key in wanted.items() if ref not in given]
    problems += [f"unexpected: {ref} {tuple(given[ref].shape)}" for ref in given if ref not in wanted]
    loaded: dict[str, torch.Tensor] = {}
    for ref, key in wanted.items():
        if ref not in given:
            continue
        value = given[ref]
        if value.shape != ours[key].shape:
            problems.append(
                f"shape mismatch: {ref} is {tuple(value.shape)} in the checkpoint, {tuple(ours[key].shape)} here"
            )
        elif key in loaded and not torch.equal(loaded[key], value):
            problems.append(f"copies of the shared tensor {key} differ: {ref}")
        else:
            loaded.setdefault(key, value)
    if problems:
        shown = problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more"] * (len(problems) > MAX_LISTED)
        raise ValueError(
            f"checkpoint does not fit this {getattr(model, 'preset', 'model')} ({len(problems)} problems); "
            "build the preset matching the checkpoint, with its num_classes:\n  " + "\n  ".join(shown)
        )
    model.load_state_dict(loaded)
    return model
