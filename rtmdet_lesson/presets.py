"""Named models and their training recipes: the official RTMDet, RTMDet-Ins and RTMDet-R sizes and the course's
CPU models (chapter 03; the recipes, chapter 07).

Every preset is the same ``RTMDet`` class (``RTMDetR`` for rotated boxes) with other numbers, so the course
models are the official architecture, only narrower, shallower and with fewer classes.

``course-sprites`` is RTMDet-Ins with deepen 0.167 (one block per CSP layer, as tiny) and widen 0.25 (2/3 of
tiny's width: neck and head at 64 channels), for the 5-class sprites at 320x320. Width is what costs time on
a CPU, as conv work grows with the square of the width; every channel count stays a multiple of 8 and the
head keeps 64 channels for the 169-number kernels (``python -m rtmdet_lesson summary course-sprites``).
``course-sprites-det`` is its detection twin and ``course-sprites-rotated`` its RTMDet-R twin (chapter 10).

``RECIPES`` holds, per preset, the training settings that differ from ``TrainConfig``'s defaults (which are
the reference's recipe): what ``python -m rtmdet_lesson train PRESET`` trains with when no flag says otherwise.
"""

from __future__ import annotations

import inspect

from rtmdet_lesson.model import RTMDet
from rtmdet_lesson.rotated.model import RTMDetR

OFFICIAL_FACTORS = {  # size -> (deepen_factor, widen_factor), from configs/rtmdet/rtmdet-ins_*_8xb32-300e_coco.py
    "tiny": (0.167, 0.375),
    "s": (0.33, 0.5),
    "m": (0.67, 0.75),
    "l": (1.0, 1.0),
    "x": (1.33, 1.25),
}
COURSE_FACTORS = dict(deepen_factor=0.167, widen_factor=0.25, num_classes=5, input_size=320)


def _settings(model_class: type = RTMDet, **given) -> dict:
    """The full ``model.settings`` of a preset: the numbers it gives over the class's own defaults."""
    defaults = {name: p.default for name, p in inspect.signature(model_class).parameters.items()
                if name not in ("preset", "class_names")}
    return {**defaults, **given}


PRESETS: dict[str, dict] = {
    **{f"rtmdet-{size}": _settings(deepen_factor=d, widen_factor=w, with_mask=False, exp_on_reg=size in "mlx")
       for size, (d, w) in OFFICIAL_FACTORS.items()},
    **{f"rtmdet-ins-{size}": _settings(deepen_factor=d, widen_factor=w, exp_on_reg=False)
       for size, (d, w) in OFFICIAL_FACTORS.items()},
    "course-sprites": _settings(**COURSE_FACTORS, exp_on_reg=False),
    "course-sprites-det": _settings(**COURSE_FACTORS, with_mask=False, exp_on_reg=False),
}
"""name -> the ``RTMDet`` arguments it stands for. ``exp_on_reg`` only matters for detectors (Ins uses ReLU)."""

# mmrotate's configs/rotated_rtmdet/rotated_rtmdet_{tiny,s,m,l}-3x-dota.py: RTMDet's factors, 15 DOTA classes at
# 1024 x 1024, exp_on_reg for m and l (the l config sets it, m inherits it)
ROTATED_PRESETS: dict[str, dict] = {
    **{f"rtmdet-r-{size}": _settings(RTMDetR, deepen_factor=OFFICIAL_FACTORS[size][0],
                                     widen_factor=OFFICIAL_FACTORS[size][1], exp_on_reg=size in "ml")
       for size in ("tiny", "s", "m", "l")},
    "course-sprites-rotated": _settings(RTMDetR, **COURSE_FACTORS),
}
"""name -> the ``RTMDetR`` arguments it stands for (mmrotate publishes tiny, s, m and l for DOTA)."""

# The course models' recipe, the one the shipped checkpoints were trained with (data/course-sprites.json and
# data/course-sprites-rotated.json record the commands): 20 epochs of batch 8 at lr 0.002, fit for a CPU.
# No mosaic or mixup: on 1000 small images the plain stage-2 pipeline learns faster in 20 epochs.
_COURSE_RECIPE = dict(epochs=20, batch_size=8, lr=0.002, warmup_iters=200, eval_interval=5)
# mmrotate's rotated_rtmdet_*-3x-dota.py: 36 epochs of batch 8 on one GPU at 0.004 / 16, evaluated every 12
_DOTA_RECIPE = dict(epochs=36, batch_size=8, lr=0.004 / 16, eval_interval=12)
RECIPES: dict[str, dict] = {
    **{name: dict(batch_size=32) for name in PRESETS},  # the reference's 32 per GPU (8 GPUs: lr 0.004)
    **{name: dict(_DOTA_RECIPE) for name in ROTATED_PRESETS},
    "course-sprites": dict(_COURSE_RECIPE, mosaic=False, mixup=False, stage2_epochs=2),
    "course-sprites-det": dict(_COURSE_RECIPE, mosaic=False, mixup=False, stage2_epochs=2),
    "course-sprites-rotated": dict(_COURSE_RECIPE, stage2_epochs=0),
}
"""name -> the ``TrainConfig`` settings of its recipe that differ from the defaults."""


def build_model(name: str, num_classes: int | None = None, **overrides) -> RTMDet:
    """Build a preset by name. Chapter 03 builds this.

    Args:
        name: one of ``PRESETS`` (``rtmdet-{tiny,s,m,l,x}``, ``rtmdet-ins-{tiny,s,m,l,x}``, ``course-sprites``,
            ``course-sprites-det``) or of ``ROTATED_PRESETS`` (``rtmdet-r-{tiny,s,m,l}``,
            ``course-sprites-rotated``; chapter 10).
        num_classes: None keeps the preset's (80 for official sizes, 15 for RTMDet-R (DOTA), 5 for course presets).
        overrides: any other ``RTMDet`` argument, e.g. ``widen_factor=0.5``, ``separate_reg_tower=True``,
            ``exp_on_reg=True``, ``class_names=[...]``.

    Returns:
        ``RTMDet`` (``RTMDetR`` for rotated presets) with ``model.preset == name``; official sizes count exactly
        the published parameters.
    """
    if name not in PRESETS and name not in ROTATED_PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid names: {', '.join([*PRESETS, *ROTATED_PRESETS])}")
    model_class, presets = (RTMDetR, ROTATED_PRESETS) if name in ROTATED_PRESETS else (RTMDet, PRESETS)
    settings = {**presets[name], **overrides}
    if num_classes is not None:
        settings["num_classes"] = num_classes
    return model_class(preset=name, **settings)
