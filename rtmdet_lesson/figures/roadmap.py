"""The course's roadmap: the whole of RTMDet-Ins on one figure, with tensor shapes, and one chapter lit up.

Every chapter opens with ``roadmap_figure(chapter)``. The shapes are read from a real forward pass of the
network (``network_shapes``), so the picture cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from torch import nn

__all__ = ["CHAPTER_TITLES", "network_shapes", "roadmap_figure"]

CHAPTER_TITLES = {
    0: "a tour", 1: "blocks and backbone", 2: "PAFPN neck", 3: "SepBN head", 4: "priors and coordinates",
    5: "label assignment", 6: "losses", 7: "training", 8: "mask decoding", 9: "speed (appendix)",
    10: "RTMDet-R (rotated boxes)",
}


def network_shapes(model: nn.Module, size: int = 64) -> dict[str, list[tuple[int, int]]]:
    """(channels, stride) of each stage's outputs per level, from one forward pass of a ``size`` square.

    ``model`` is an ``RTMDet`` (backbone, neck, head). Returns ``{"backbone": [(96, 8), (192, 16), (384, 32)],
    "neck": ..., "cls": ..., "box": ..., "kernel": ..., "mask_feats": [(8, 8)]}`` for rtmdet-ins-tiny (the
    last two only when the model has a mask head).
    """
    parameter = next(model.parameters())
    x = torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        c345 = model.backbone(x)
        p345 = model.neck(c345)
        out = model.head(p345)
    model.train(was_training)

    def levels(maps: list[torch.Tensor]) -> list[tuple[int, int]]:  # each map (1, C, h, w)
        return [(m.shape[1], size // m.shape[-1]) for m in maps]

    result = {"backbone": levels(c345), "neck": levels(p345), "cls": levels(out.cls_scores),
              "box": levels(out.bbox_preds)}
    if out.kernel_preds is not None:
        result["kernel"] = levels(out.kernel_preds)
        result["mask_feats"] = levels([out.mask_feats])
    return result


def _per_level(levels: list[tuple[int, int]]) -> list[str]:
    return [f"({c}, H/{s}, W/{s})" for c, s in levels]


def _per_stride(name: str, levels: list[tuple[int, int]]) -> str:
    return f"{name} ({levels[0][0]}, H/s, W/s)"


@dataclass
class _Box:
    x: float
    y: float
    title: str
    lines: list[str]
    chapters: tuple[int, ...]
    width: float = 1.55
    height: float = 1.15


def _boxes(shapes: dict[str, list[tuple[int, int]]]) -> list[_Box]:
    head_lines = [_per_stride("cls", shapes["cls"]), _per_stride("box", shapes["box"])]
    if "kernel" in shapes:
        head_lines += [_per_stride("kernels", shapes["kernel"]), "mask feats " + _per_level(shapes["mask_feats"])[0]]
    return [
        _Box(0.0, 2.2, "image", ["(3, H, W)", "letterboxed,", "normalised"], (0,)),
        _Box(1.9, 2.2, "backbone", ["CSPNeXt", *_per_level(shapes["backbone"])], (1,)),
        _Box(3.8, 2.2, "neck", ["CSPNeXt-PAFPN", *_per_level(shapes["neck"])], (2,)),
        _Box(5.7, 2.2, "head", ["SepBN, s = 8, 16, 32", *head_lines], (3, 10), width=1.9),
        _Box(1.9, 0.4, "priors", ["a point per cell", "of each level,", "coordinate maps"], (4,)),
        _Box(3.8, 0.4, "assignment", ["dynamic soft", "labels: cost", "and top-k"], (5,)),
        _Box(5.7, 0.4, "losses", ["QFL + GIoU", "+ Dice, one", "number to learn"], (6,)),
        _Box(7.9, 0.4, "training", ["augment, AdamW,", "schedule, EMA"], (7,)),
        _Box(7.9, 2.2, "decoding", ["top-k, NMS,", "dynamic convs,", "masks at the", "original size"], (8, 10)),
        _Box(9.9, 2.2, "instances", ["boxes, scores,", "labels, masks", "(K per image)"], (0, 8)),
    ]


_ARROWS = [("image", "backbone"), ("backbone", "neck"), ("neck", "head"), ("head", "decoding"),
           ("decoding", "instances"), ("priors", "assignment"), ("assignment", "losses"), ("losses", "training"),
           ("head", "losses")]


def roadmap_figure(chapter: int | None = None, model: nn.Module | None = None, width: float = 12.0) -> Figure:
    """The roadmap with ``chapter``'s pieces highlighted (None: all, as in the tour).

    ``model`` gives the shapes (default: ``rtmdet-ins-tiny`` with 80 classes). Chapter 09 lights up the
    network (its speed-ups apply there), chapter 10 the head and the decoding it changes for rotated boxes.
    """
    if chapter is not None and chapter not in CHAPTER_TITLES:
        raise ValueError(f"no chapter {chapter}; chapters are {sorted(CHAPTER_TITLES)}")
    if model is None:
        from rtmdet_lesson.presets import build_model

        model = build_model("rtmdet-ins-tiny", num_classes=80)
    boxes = _boxes(network_shapes(model))
    lit = {b.title for b in boxes if chapter is None or chapter in b.chapters}
    if chapter == 9:
        lit = {"backbone", "neck", "head", "decoding"}
    fig, ax = plt.subplots(figsize=(width, width * 0.36))
    by_title = {b.title: b for b in boxes}
    for b in boxes:
        on = b.title in lit
        ax.add_patch(FancyBboxPatch((b.x, b.y), b.width, b.height, boxstyle="round,pad=0.04",
                                    facecolor="#ffd27f" if on else "#eeeeee", edgecolor="#444444" if on else "#aaaaaa",
                                    linewidth=1.6 if on else 0.8))
        colour = "black" if on else "#888888"
        numbers = ", ".join(f"{c:02d}" for c in b.chapters if c not in (0, 10))
        label = f"{b.title} ({numbers})" if numbers else b.title
        ax.text(b.x + b.width / 2, b.y + b.height - 0.14, label, ha="center", va="top", fontsize=10,
                fontweight="bold", color=colour)
        ax.text(b.x + b.width / 2, b.y + b.height - 0.38, "\n".join(b.lines), ha="center", va="top", fontsize=7,
                color=colour, linespacing=1.25)
    for start, end in _ARROWS:
        a, b = by_title[start], by_title[end]
        if abs(a.y - b.y) < 1e-6:
            tail, tip = (a.x + a.width + 0.06, a.y + a.height / 2), (b.x - 0.06, b.y + b.height / 2)
        else:  # from the top row down to the bottom row
            tail, tip = (a.x + a.width / 2, a.y - 0.06), (b.x + b.width / 2, b.y + b.height + 0.06)
        ax.add_patch(FancyArrowPatch(tail, tip, arrowstyle="-|>", mutation_scale=10, color="#666666"))
    ax.text(0.0, 3.75, "inference: top row", fontsize=8, color="#666666")
    ax.text(0.0, 1.2, "training: bottom row", fontsize=8, color="#666666")
    title = "RTMDet-Ins, the whole course" if chapter is None else f"Chapter {chapter:02d}: {CHAPTER_TITLES[chapter]}"
    ax.set_title(f"{title}  (shapes per image for rtmdet-ins-tiny; H, W multiples of 32)", fontsize=10)
    ax.set_xlim(-0.1, 11.6)
    ax.set_ylim(0.25, 3.95)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig
