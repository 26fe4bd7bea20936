"""The pixel sprites turned at any angle, annotated with oriented boxes in DOTA's text format (chapter 10).

The same five sprites and four backgrounds as ``data/sprites.py`` (the same drawing functions, the same
sizes), each turned about its centre by its own angle, so a tight axis-aligned box would hold a lot of
background and RTMDet-R's oriented boxes fit where RTMDet's cannot. Differences from the upright sprites:

- Objects do not overlap: each is placed where its axis-aligned extent misses every earlier one (up to
  ``PLACEMENT_TRIES`` random places, else it is left out), so every annotation is the whole object. This is
  also how aerial images look: cars, ships and planes seen from above rarely hide each other.
- The annotation is the sprite's rectangle (its art canvas, outline included) turned with it: the oriented
  box ``(cx, cy, w, h, angle)`` written as its four corners.
- Coins are round, so their box's angle is only as visible as the mark on them (DOTA's round classes,
  storage tanks and roundabouts, have the same trouble; mmrotate's ``RandomRotate`` turns them only by
  quarter turns, its ``rect_obj_labels``).
- Sprites whose short side is under ``DIFFICULT_SIDE`` px are marked difficult (flag 1), as DOTA marks
  objects that are hard to recognise. Training uses them; the DOTA evaluation ignores them.

Angles are drawn without sin or cos, so that every machine renders the same pixels: a Pythagorean pair
(m, n) gives ``cos = (m^2 - n^2) / (m^2 + n^2)`` and ``sin = 2mn / (m^2 + n^2)`` exactly (the angle
2 atan(n / m), from 0 up to 86 degrees), and a random quarter turn spreads it over the full circle. A pixel is
painted by sampling the sprite, nearest neighbour, at the pixel centre turned back into the sprite's frame.

On disk (``python -m rtmdet_lesson data sprites --rotated --out DIR``), the layout of mmrotate's DOTA
loader (``mmrotate/datasets/dota.py``: an image folder and an ``annfiles`` folder with one ``.txt`` per
image, the same name)::

    DIR/dataset.json                          what wrote the folder, the class names, the seed
    DIR/train/images/000001.png ...           DIR/train/annfiles/000001.txt ...
    DIR/val/images/000001.png ...             DIR/val/annfiles/000001.txt ...

Each line of an annfile is one object, DOTA v1.0's ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult``: the
corners in pixels (two decimals) going round the box, the class name, 0 or 1. An image without objects has
an empty file. Read a split with ``rtmdet_lesson.rotated.dota.DotaDataset``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rtmdet_lesson.data.sprites import (
    IMAGE_SIDES,
    MAX_OBJECTS,
    SPLITS,
    SPRITE_CLASSES,
    _background,
    _rng,
    _upscale_factor,
    draw_sprite,
    foreign_content,
    written_by,
)

DESCRIPTION = "rtmdet-lesson rotated pixel sprites"  # in DIR/dataset.json: marks a folder this generator wrote
MARKER = "dataset.json"
PLACEMENT_TRIES = 10
DIFFICULT_SIDE = 10  # px: sprites with a shorter short side are flagged difficult
PYTHAGOREAN_M = (4, 16)  # m of the Pythagorean pairs (m, n), 0 <= n < m: 130 pairs per quarter turn
_IMAGE_NAME = re.compile(r"\d{6}\.png")
_ANN_NAME = re.compile(r"\d{6}\.txt")


@dataclass
class RotatedSprite:
    """One annotated object: label (index into SPRITE_CLASSES), its box (cx, cy, w, h, angle) and corners."""

    label: int
    rbox: tuple[float, float, float, float, float]  # angle in radians, w along the sprite's rows
    corners: np.ndarray  # (4, 2) float64 x, y going round the box
    difficult: bool

    @property
    def name(self) -> str:
        return SPRITE_CLASSES[self.label]


@dataclass
class RotatedSpriteSample:
    """One rendered image (H, W, 3) uint8 RGB and its objects in paste order."""

    image: np.ndarray
    objects: list[RotatedSprite]


def _turn(rng: np.random.Generator) -> tuple[float, float, int, int, int]:
    """A rotation without trigonometry: (cos, sin) of 2 atan(n / m) plus q quarter turns, and (m, n, q)."""
    m = int(rng.integers(PYTHAGOREAN_M[0], PYTHAGOREAN_M[1] + 1))
    n = int(rng.integers(0, m))  # n = 0: upright (about one sprite in eight); n = m would repeat a quarter turn
    q = int(rng.integers(4))
    r = m * m + n * n
    cos, sin = (m * m - n * n) / r, (2 * m * n) / r
    for _ in range(q):  # a quarter turn clockwise on screen: (cos, sin) -> (-sin, cos)
        cos, sin = -sin, cos
    return cos, sin, m, n, q


def _corners(cx: float, cy: float, w: float, h: float, cos: float, sin: float) -> np.ndarray:
    """(4, 2) corners of the turned rectangle: c + u + v, c + u - v, c - u - v, c - u + v (as geometry.py)."""
    ux, uy = w / 2 * cos, w / 2 * sin  # half of the w side
    vx, vy = -h / 2 * sin, h / 2 * cos  # half of the h side
    return np.array([[cx + ux + vx, cy + uy + vy], [cx + ux - vx, cy + uy - vy],
                     [cx - ux - vx, cy - uy - vy], [cx - ux + vx, cy - uy + vy]])


def _paste_turned(image: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, cx: float, cy: float,
                  cos: float, sin: float) -> None:
    """Paint the sprite (h, w) turned by (cos, sin) about (cx, cy) into ``image`` (H, W, 3), in place.

    Every image pixel whose centre, turned back into the sprite's frame, lands on a covered sprite pixel
    takes that pixel's colour (nearest neighbour).
    """
    h, w = alpha.shape
    ex, ey = (abs(cos) * w + abs(sin) * h) / 2, (abs(sin) * w + abs(cos) * h) / 2  # half extents on screen
    x0, x1 = max(0, int(np.floor(cx - ex))), min(image.shape[1], int(np.ceil(cx + ex)))
    y0, y1 = max(0, int(np.floor(cy - ey))), min(image.shape[0], int(np.ceil(cy + ey)))
    ys, xs = np.mgrid[y0:y1, x0:x1]  # (h', w') pixel indices of the region
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    col = np.floor(dx * cos + dy * sin + w / 2).astype(np.int64)  # along the sprite's rows (its w side)
    row = np.floor(dy * cos - dx * sin + h / 2).astype(np.int64)  # along its columns (its h side)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    inside[inside] = alpha[row[inside], col[inside]]
    region = image[y0:y1, x0:x1]
    region[inside] = rgb[row[inside], col[inside]]


def render_rotated_sample(seed: int = 0, split: str = "train", index: int = 0) -> RotatedSpriteSample:
    """Render sample ``index`` of a split in memory, exactly as ``generate_rotated_sprites`` writes it.

    Returns the image (H, W, 3) uint8 RGB and its objects with their oriented boxes. Chapter 10 shows these.
    The random stream is the upright sprites' (same seed, split and index) but the samples differ.
    """
    rng = _rng(seed, split, index)
    height, width = (int(s) for s in rng.choice(IMAGE_SIDES, size=2))
    image = _background(rng, height, width)
    taken: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1 of placed objects' extents
    objects = []
    for _ in range(int(rng.integers(0, MAX_OBJECTS + 1))):
        label = int(rng.integers(len(SPRITE_CLASSES)))
        rgb, alpha = draw_sprite(label, rng)
        f = _upscale_factor(rng, *alpha.shape)
        rgb, alpha = rgb.repeat(f, 0).repeat(f, 1), alpha.repeat(f, 0).repeat(f, 1)  # nearest neighbour
        h, w = alpha.shape
        cos, sin, *_ = _turn(rng)
        ex, ey = (abs(cos) * w + abs(sin) * h) / 2, (abs(sin) * w + abs(cos) * h) / 2
        if 2 * ex > width or 2 * ey > height:
            continue
        for _ in range(PLACEMENT_TRIES):
            cx = ex + rng.random() * (width - 2 * ex)
            cy = ey + rng.random() * (height - 2 * ey)
            box = (cx - ex, cy - ey, cx + ex, cy + ey)
            if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
                break
        else:
            continue
        taken.append(box)
        _paste_turned(image, rgb, alpha, cx, cy, cos, sin)
        angle = float(np.arctan2(sin, cos))  # for the record only: the pixels never depend on it
        objects.append(RotatedSprite(label, (cx, cy, float(w), float(h), angle), _corners(cx, cy, w, h, cos, sin),
                                     difficult=min(w, h) < DIFFICULT_SIDE))
    return RotatedSpriteSample(image=np.ascontiguousarray(image), objects=objects)


def dota_lines(sample: RotatedSpriteSample) -> str:
    """The sample's annotation file: one ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult`` line per object."""
    lines = []
    for obj in sample.objects:
        coords = " ".join(f"{v:.2f}" for v in obj.corners.reshape(-1))
        lines.append(f"{coords} {obj.name} {int(obj.difficult)}\n")
    return "".join(lines)


# ---------------------------------------------------------------- a dataset on disk


def _write_split(out: Path, seed: int, split: str, count: int) -> tuple[int, int]:
    """Write one split; return (number of objects, number of stale files removed)."""
    images_dir, ann_dir = out / split / "images", out / split / "annfiles"
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    n_objects = 0
    for index in range(count):
        sample = render_rotated_sample(seed, split, index)
        stem = f"{index + 1:06d}"
        Image.fromarray(sample.image).save(images_dir / f"{stem}.png", format="PNG", compress_level=6)
        (ann_dir / f"{stem}.txt").write_text(dota_lines(sample), encoding="utf-8")
        n_objects += len(sample.objects)
    wanted = {f"{i + 1:06d}" for i in range(count)}
    stale = [p for folder in (images_dir, ann_dir) for p in folder.iterdir() if p.stem not in wanted]
    for p in stale:  # files from an earlier, larger run would otherwise be read as part of this one
        p.unlink()
    return n_objects, len(stale)


def generate_rotated_sprites(out: str | os.PathLike, seed: int = 0, n_train: int = 1000, n_val: int = 200) -> Path:
    """Write the rotated sprites' train and val splits under ``out`` in DOTA's format; return ``out``.

    See the module docstring for the layout. Refuses a folder holding files it did not write. Chapter 10.
    """
    out = Path(out)
    write_splits(out, seed, {"train": n_train, "val": n_val})
    return out


# what write_splits writes: dataset.json (first: it marks the folder), images/NNNNNN.png, annfiles/NNNNNN.txt
LAYOUT = {"": re.escape(MARKER), **{name: pattern for split in SPLITS for name, pattern in (
    (split, "(?!)"), (f"{split}/images", _IMAGE_NAME.pattern), (f"{split}/annfiles", _ANN_NAME.pattern))}}


def write_splits(out: Path, seed: int, counts: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """Write the splits ``counts`` names (split -> number of images); return per split (images, objects, stale
    files removed). Refuses a folder holding files this generator did not write."""
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"--{split} must be 0 or more images, got {n}")
    foreign = foreign_content(out, LAYOUT, MARKER, lambda path: written_by(path, DESCRIPTION, "description"),
                              marker_required=True)
    if foreign is not None:
        raise FileExistsError(f"{out} holds files the rotated sprites generator did not write ({foreign}); it "
                              "would overwrite or delete files there, so choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    marker = {"description": DESCRIPTION, "format": "DOTA v1.0 (x1 y1 x2 y2 x3 y3 x4 y4 class difficult)",
              "classes": list(SPRITE_CLASSES), "seed": seed, "images": counts, "version": 1}
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")  # first: marks the folder
    return {split: (n, *_write_split(out, seed, split, n)) for split, n in counts.items()}
