"""Named model sizes: the five official RTMDet and RTMDet-Ins configs and the course's CPU models (chapter 03).

Every preset is the same ``RTMDet`` class with different numbers, so the course models are the official
architecture, only narrower, shallower and with fewer classes.

Course presets (trained in chapter 07 on the 5-class sprites at 320x320 on a 2-core laptop CPU):
``course-sprites`` is RTMDet-Ins with deepen 0.167 (one block per CSP layer, as tiny) and widen 0.25 (2/3 of
tiny's width: neck and head at 64 channels). Width is what costs time on a CPU: conv work grows with the
square of the width, so it needs 1.33 G conv multiply-accumulates per 320x320 image against 2.97 G for
RTMDet-Ins-tiny (0.45x; ``python -m rtmdet_lesson summary``), with 2.5 M parameters, while every channel
count stays a multiple of 8 and the head keeps 64 channels for the 169-number kernels. Depth is already at
its floor of one block per CSP layer. ``course-sprites-det`` is its detection twin.
"""

from __future__ import annotations

from rtmdet_lesson.model import RTMDet

OFFICIAL_FACTORS = {  # size -> (deepen_factor, widen_factor), from configs/rtmdet/rtmdet-ins_*_8xb32-300e_coco.py
    "tiny": (0.167, 0.375),
    "s": (0.33, 0.5),
    "m": (0.67, 0.75),
    "l": (1.0, 1.0),
    "x": (1.33, 1.25),
}


def _preset(
    deepen: float, widen: float, with_mask: bool, exp_on_reg: bool, num_classes: int, input_size: int = 640
) -> dict:
    return dict(
        deepen_factor=deepen,
        widen_factor=widen,
        with_mask=with_mask,
        exp_on_reg=exp_on_reg,
        separate_reg_tower=False,
        num_classes=num_classes,
        input_size=input_size,
    )


PRESETS: dict[str, dict] = {
    **{
        f"rtmdet-{size}": _preset(d, w, with_mask=False, exp_on_reg=size in ("m", "l", "x"), num_classes=80)
        for size, (d, w) in OFFICIAL_FACTORS.items()
    },
    **{
        f"rtmdet-ins-{size}": _preset(d, w, with_mask=True, exp_on_reg=False, num_classes=80)
        for size, (d, w) in OFFICIAL_FACTORS.items()
    },
    "course-sprites": _preset(0.167, 0.25, with_mask=True, exp_on_reg=False, num_classes=5, input_size=320),
    "course-sprites-det": _preset(0.167, 0.25, with_mask=False, exp_on_reg=False, num_classes=5, input_size=320),
}
"""name -> the ``RTMDet`` arguments it stands for. ``exp_on_reg`` only matters for detectors (Ins uses ReLU)."""


def build_model(name: str, num_classes: int | None = None, **overrides) -> RTMDet:
    """Build a preset by name. Chapter 03 builds this.

    Args:
        name: one of ``PRESETS`` (``rtmdet-{tiny,s,m,l,x}``, ``rtmdet-ins-{tiny,s,m,l,x}``, ``course-sprites``,
            ``course-sprites-det``) or of ``rotated.model.ROTATED_PRESETS`` (``rtmdet-r-{tiny,s,m,l}``, chapter 10).
        num_classes: None keeps the preset's (80 for official sizes, 15 for RTMDet-R (DOTA), 5 for course presets).
        overrides: any other ``RTMDet`` argument, e.g. ``widen_factor=0.5``, ``separate_reg_tower=True``,
            ``exp_on_reg=True``, ``class_names=[...]``.

    Returns:
        ``RTMDet`` (``RTMDetR`` for ``rtmdet-r-*``) with ``model.preset == name``; official sizes count exactly
        the published parameters.
    """
    from rtmdet_lesson.rotated.model import ROTATED_PRESETS, RTMDetR  # imported here: it imports this module

    if name not in PRESETS and name not in ROTATED_PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid names: {', '.join([*PRESETS, *ROTATED_PRESETS])}")
    model_class, presets = (RTMDetR, ROTATED_PRESETS) if name in ROTATED_PRESETS else (RTMDet, PRESETS)
    settings = {**presets[name], **overrides}
    if num_classes is not None:
        settings["num_classes"] = num_classes
    return model_class(preset=name, **settings)
