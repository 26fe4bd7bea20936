"""The generated pixel-sprite dataset: pixel-art objects on tiled backgrounds, written as COCO (chapter 00).

It mirrors, at laptop scale, the use case the course grew from: finding pixel-art sprites and portraits in
game screenshots. Five classes, drawn on a small grid of "art pixels" with a random
palette per object and then blown up by an integer factor with nearest-neighbour repetition, so every
edge is a hard pixel edge:

    portrait   a framed bust; the frame is part of the object (a filled rectangle)
    character  a little humanoid: head, body with arms, two legs (a non-convex silhouette)
    slime      a dome-shaped blob with eyes
    chest      a box with a lid, metal bands and a lock
    coin       a round disc with a rim and a mark

Objects are pasted one after another, so later ones hide parts of earlier ones. Each instance's mask is
what stays **visible**; its box is recomputed from that visible mask. The drop rule: an instance is removed
(and not drawn at all) when fewer than ``MIN_VISIBLE_PIXELS`` pixels or less than ``MIN_VISIBLE_FRACTION``
of its own pixels stay visible; removing it can only uncover others, so the rule is applied until nothing
changes. Every painted object is therefore annotated, and every annotation keeps at least 20 px and 15% of
its object (a strip of a mostly hidden object can still be thin).

Sizes: most objects have a short side of at least 16 px, so that stride-8 prior points fall inside them (a
prior is an assignment candidate only if its point lies inside the box); about one in eight is deliberately
small (short side about 9 to 15 px). Unoccluded sprites measure 9 to 120 px along their long side. Images
have sides from ``IMAGE_SIDES`` in any combination (square and not).

Determinism: sample ``index`` of a split is drawn from ``numpy.random.SeedSequence([seed, split, index])``
with integer and basic float arithmetic only (no exp/log/sin whose last bit may differ between CPUs), so
the pixels and the JSON are the same on every machine; PNG bytes are the same wherever Pillow links the same
zlib build. A sample does not depend on how many others are generated.

On disk (what ``python -m rtmdet_lesson data sprites --out DIR`` writes)::

    DIR/train/images/000001.png ...   DIR/train/annotations.json
    DIR/val/images/000001.png ...     DIR/val/annotations.json

``file_name`` in the JSON is relative to the ``images`` folder ("000001.png"), as in COCO itself, and equals
the image id zero-padded. Masks are compressed RLE (``counts`` a str), ``bbox`` is ``[x, y, w, h]`` as
pycocotools' ``toBbox`` gives it (exclusive extent), ``area`` is the mask's pixel count, ``iscrowd`` is 0.
"""

from __future__ import annotations

import colorsys
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SPRITE_CLASSES = ("portrait", "character", "slime", "chest", "coin")
SPLITS = ("train", "val")
DESCRIPTION = "rtmdet-lesson pixel sprites"  # in every annotations.json: marks a folder this generator wrote
IMAGE_SIDES = (192, 224, 256, 288, 320)
MAX_OBJECTS = 12
MIN_VISIBLE_PIXELS = 20
MIN_VISIBLE_FRACTION = 0.15
MAX_SIDE = 120  # longest side of a pasted sprite, in image pixels
SMALL_FRACTION = 0.125  # share of objects drawn deliberately small (short side < 16 px)


@dataclass
class SpriteInstance:
    """One annotated object: its label (index into SPRITE_CLASSES) and masks of shape (H, W)."""

    label: int
    mask: np.ndarray  # (H, W) bool, the visible pixels
    full_area: int  # pixels the sprite would cover with nothing on top of it

    @property
    def name(self) -> str:
        return SPRITE_CLASSES[self.label]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """x1, y1, x2, y2 of the visible mask, right/bottom exclusive."""
        ys, xs = np.nonzero(self.mask)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass
class SpriteSample:
    """One rendered image (H, W, 3) uint8 RGB and its instances in paste order (bottom first)."""

    image: np.ndarray
    instances: list[SpriteInstance]


# ---------------------------------------------------------------- colours and small drawing helpers


def _color(h: float, s: float, v: float) -> np.ndarray:
    return np.array([round(c * 255) for c in colorsys.hsv_to_rgb(h % 1.0, s, v)], dtype=np.uint8)


def _random_color(rng: np.random.Generator, s=(0.3, 0.9), v=(0.35, 0.95)) -> np.ndarray:
    return _color(rng.random(), rng.uniform(*s), rng.uniform(*v))


def _shade(color: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(color.astype(np.float64) * factor, 0, 255).round().astype(np.uint8)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """(h, w) bool: art pixels whose centres lie inside the ellipse."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x + 0.5 - cx) / rx) ** 2 + ((y + 0.5 - cy) / ry) ** 2 <= 1.0


def _outline(rgb: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grow the sprite by one art pixel on every side and paint a 4-connected outline around it."""
    rgb = np.pad(rgb, ((1, 1), (1, 1), (0, 0)))
    alpha = np.pad(alpha, 1)
    grown = alpha.copy()
    grown[1:] |= alpha[:-1]
    grown[:-1] |= alpha[1:]
    grown[:, 1:] |= alpha[:, :-1]
    grown[:, :-1] |= alpha[:, 1:]
    rgb[grown & ~alpha] = color
    return rgb, grown


SKIN = ((0.06, 0.25, 0.98), (0.07, 0.4, 0.85), (0.06, 0.5, 0.65), (0.07, 0.55, 0.45), (0.3, 0.35, 0.8))
DARK = np.array([24, 20, 32], dtype=np.uint8)


def _skin(rng: np.random.Generator) -> np.ndarray:
    h, s, v = SKIN[rng.integers(len(SKIN))]
    return _color(h + rng.uniform(-0.02, 0.02), s, v)


# ---------------------------------------------------------------- the five sprites, at art resolution


def _portrait(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    w = int(rng.integers(10, 17))
    h = int(rng.integers(w, w + 7))
    frame = _random_color(rng, s=(0.3, 0.8), v=(0.5, 0.95))
    t = int(rng.integers(1, 3))  # frame thickness inside the dark outer line
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = _shade(frame, 0.5)
    rgb[1:-1, 1:-1] = frame
    rgb[1, 1:-1] = _shade(frame, 1.3)  # lit top edge of the frame
    ih, iw = h - 2 - 2 * t, w - 2 - 2 * t
    inner = np.empty((ih, iw, 3), np.uint8)
    inner[:] = _random_color(rng, s=(0.1, 0.6), v=(0.25, 0.9))
    cx, cy = iw / 2, ih * 0.42
    face = _ellipse(ih, iw, cy, cx, ih * 0.26, iw * 0.3)
    bust = _ellipse(ih, iw, ih * 1.08, cx, ih * 0.36, iw * 0.5)
    inner[bust] = _random_color(rng)
    inner[face] = _skin(rng)
    hair_rows = np.arange(ih)[:, None] < cy - ih * 0.12
    inner[face & hair_rows] = _random_color(rng, v=(0.15, 0.8))
    eye_row, dx = int(cy), max(1, round(iw * 0.13))
    inner[eye_row, int(cx) - dx - 1] = DARK
    inner[eye_row, int(cx) + dx] = DARK
    rgb[1 + t : 1 + t + ih, 1 + t : 1 + t + iw] = inner
    return rgb, np.ones((h, w), bool)


def _character(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    w = int(rng.integers(7, 12))
    h = int(rng.integers(13, 20))
    head_h, legs_h = max(4, round(h * 0.33)), max(3, round(h * 0.3))
    body_h = h - head_h - legs_h
    arm = 2 if w >= 10 else 1
    torso = w - 2 * arm
    head_w = torso - 2 if torso >= 6 and rng.random() < 0.5 else torso  # same parity: centred exactly
    rgb, alpha = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), bool)
    skin, shirt, pants, hair = _skin(rng), _random_color(rng), _random_color(rng, v=(0.2, 0.7)), _random_color(rng)
    h0 = (w - head_w) // 2
    alpha[:head_h, h0 : h0 + head_w] = True
    rgb[:head_h, h0 : h0 + head_w] = skin
    rgb[: max(1, head_h // 3), h0 : h0 + head_w] = hair
    rgb[: head_h - 1, h0] = hair
    rgb[: head_h - 1, h0 + head_w - 1] = hair
    eye_row = head_h // 3 + 1
    rgb[eye_row, h0 + 1] = DARK
    rgb[eye_row, h0 + head_w - 2] = DARK
    top, bottom = head_h, head_h + body_h
    alpha[top:bottom, :] = True
    rgb[top:bottom, :] = shirt
    rgb[top:bottom, :arm] = _shade(shirt, 0.8)  # sleeves
    rgb[top:bottom, w - arm :] = _shade(shirt, 0.8)
    rgb[bottom - 1, :arm] = skin  # hands
    rgb[bottom - 1, w - arm :] = skin
    gap = 1 if torso % 2 else 2
    leg = (torso - gap) // 2
    for x0 in (arm, arm + leg + gap):
        alpha[bottom:, x0 : x0 + leg] = True
        rgb[bottom:, x0 : x0 + leg] = pants
        rgb[h - 1, x0 : x0 + leg] = DARK  # shoes
    return _outline(rgb, alpha, _shade(shirt, 0.35))


def _slime(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    w = int(rng.integers(10, 17))
    h = int(rng.integers(max(6, w * 55 // 100), w * 80 // 100 + 1))
    body = _random_color(rng, s=(0.55, 1.0), v=(0.6, 1.0))
    alpha = _ellipse(h, w, h, w / 2, h, w / 2)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[alpha] = body
    rgb[h - 1][alpha[h - 1]] = _shade(body, 0.75)
    hx = w * 3 // 10
    top = int(np.argmax(alpha[:, hx])) + 1
    rgb[top, hx : hx + 2] = _shade(body, 1.4)  # highlight
    eye_row, dx = h * 55 // 100, max(1, w // 5)
    for x in (w // 2 - dx - 1, w // 2 + dx):
        rgb[eye_row : eye_row + 1 + (h >= 9), x] = DARK
    return _outline(rgb, alpha, _shade(body, 0.4))


def _metal(rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(3)  # gold, silver, copper
    h, s = ((0.13, 0.8), (0.6, 0.08), (0.06, 0.7))[kind]
    return _color(h + rng.uniform(-0.02, 0.02), s + rng.uniform(-0.05, 0.1), rng.uniform(0.75, 1.0))


def _chest(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    w = int(rng.integers(10, 17))
    h = int(rng.integers(7, min(12, w)))
    wood, metal = _random_color(rng, s=(0.4, 0.9), v=(0.35, 0.75)), _metal(rng)
    alpha = np.ones((h, w), bool)
    alpha[0, 0] = alpha[0, w - 1] = False  # rounded lid
    lid = max(2, round(h * 0.4))
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = wood
    rgb[:lid] = _shade(wood, 1.2)
    rgb[lid + 1 :: 2] = _shade(wood, 0.88)  # planks
    rgb[lid] = _shade(wood, 0.5)
    rgb[:, 1] = rgb[:, w - 2] = metal  # bands
    cx = w // 2
    rgb[lid - 1 : lid + 2, cx - 1 : cx + 1] = metal  # lock
    rgb[lid + 1, cx - 1] = DARK
    rgb[~alpha] = 0
    return _outline(rgb, alpha, _shade(wood, 0.35))


def _coin(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d = int(rng.integers(7, 13))
    metal = _metal(rng)
    alpha = _ellipse(d, d, d / 2, d / 2, d / 2, d / 2)
    face = _ellipse(d, d, d / 2, d / 2, d / 2 - 1.2, d / 2 - 1.2)
    rgb = np.zeros((d, d, 3), np.uint8)
    rgb[alpha] = _shade(metal, 0.75)  # rim
    rgb[face] = metal
    rgb[d // 4, d // 3] = _shade(metal, 1.35)  # glint
    rgb[d * 3 // 10 : d - d * 3 // 10, d // 2] = _shade(metal, 0.6)  # the mark
    return _outline(rgb, alpha, _shade(metal, 0.4))


DRAW = (_portrait, _character, _slime, _chest, _coin)


def draw_sprite(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sprite of class ``label`` at art resolution: colours (h, w, 3) uint8 and coverage (h, w) bool."""
    if not 0 <= label < len(SPRITE_CLASSES):
        raise ValueError(f"label {label} is not a sprite class; use 0..{len(SPRITE_CLASSES) - 1} ({SPRITE_CLASSES})")
    return DRAW[label](rng)


def _upscale_factor(rng: np.random.Generator, art_h: int, art_w: int) -> int:
    """Integer pixel size: short side mostly 16..(whatever keeps the long side <= MAX_SIDE), a few small ones."""
    short, long = min(art_h, art_w), max(art_h, art_w)
    max_factor = max(1, MAX_SIDE // long)
    if rng.random() < SMALL_FRACTION:
        return max(1, int(rng.integers(8, 16)) // short)
    max_short = max(16, short * max_factor)
    target = int(rng.integers(16, int(rng.integers(16, max_short + 1)) + 1))  # skewed towards small
    return min(max_factor, -(-target // short))


# ---------------------------------------------------------------- backgrounds


def _grass(rng, h, w):
    base = _color(rng.uniform(0.2, 0.42), rng.uniform(0.4, 0.8), rng.uniform(0.35, 0.7))
    r = rng.random((h, w))
    img = np.empty((h, w, 3), np.uint8)
    img[:] = base
    img[r < 0.3] = _shade(base, 0.8)
    img[(r >= 0.3) & (r < 0.4)] = _shade(base, 1.2)
    img[r > 0.99] = _random_color(rng, s=(0.5, 1.0), v=(0.8, 1.0))  # flowers
    return img


def _stone(rng, h, w):
    base = _color(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.75))
    bh, bw = int(rng.integers(3, 6)), int(rng.integers(5, 10))
    y, x = np.mgrid[0:h, 0:w]
    row = y // bh
    xs = x + (row % 2) * (bw // 2)  # every other row of bricks shifted by half a brick
    brick = row * (w // bw + 2) + xs // bw
    shades = 0.8 + 0.4 * rng.random(int(brick.max()) + 1)
    img = (base.astype(np.float64) * shades[brick][..., None]).clip(0, 255).round().astype(np.uint8)
    img[(y % bh == 0) | (xs % bw == 0)] = _shade(base, 0.55)  # mortar
    return img


def _checker(rng, h, w):
    a, b = _random_color(rng), _random_color(rng)
    t = int(rng.integers(2, 7))
    y, x = np.mgrid[0:h, 0:w]
    return np.where((((y // t) + (x // t)) % 2 == 0)[..., None], a, b)


def _noise(rng, h, w):
    palette = np.stack([_random_color(rng) for _ in range(int(rng.integers(3, 6)))])
    coarse = rng.integers(len(palette), size=((h + 1) // 2, (w + 1) // 2))
    return palette[coarse.repeat(2, 0).repeat(2, 1)[:h, :w]]


BACKGROUNDS = {"grass": _grass, "stone": _stone, "checker": _checker, "noise": _noise}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    kind = tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    f = int(rng.integers(2, 5))  # size of one background art pixel
    tile = BACKGROUNDS[kind](rng, -(-height // f), -(-width // f))
    return tile.repeat(f, 0).repeat(f, 1)[:height, :width]


# ---------------------------------------------------------------- one image


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; use one of {SPLITS}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLITS.index(split), index])))


def render_sample(seed: int = 0, split: str = "train", index: int = 0) -> SpriteSample:
    """Render sample ``index`` of a split in memory, exactly as ``generate_sprites`` writes it to disk.

    Returns a SpriteSample: image (H, W, 3) uint8 RGB and the kept instances, each with a (H, W) bool mask
    of its visible pixels. Chapter 00 shows these.
    """
    rng = _rng(seed, split, index)
    height, width = (int(s) for s in rng.choice(IMAGE_SIDES, size=2))
    image = _background(rng, height, width)
    placed = []  # (label, rgb, alpha, y0, x0) in paste order
    for _ in range(int(rng.integers(0, MAX_OBJECTS + 1))):
        label = int(rng.integers(len(SPRITE_CLASSES)))
        rgb, alpha = draw_sprite(label, rng)
        f = _upscale_factor(rng, *alpha.shape)
        rgb, alpha = rgb.repeat(f, 0).repeat(f, 1), alpha.repeat(f, 0).repeat(f, 1)  # nearest neighbour
        y0 = int(rng.integers(0, height - alpha.shape[0] + 1))
        x0 = int(rng.integers(0, width - alpha.shape[1] + 1))
        placed.append((label, rgb, alpha, y0, x0))

    while True:  # drop (almost) hidden objects until every kept one is visible enough
        owner = np.full((height, width), -1, np.int64)  # index into `placed` of the top object
        for j, (_, _, alpha, y0, x0) in enumerate(placed):
            owner[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]][alpha] = j
        visible = np.bincount(owner[owner >= 0], minlength=len(placed))
        full = [int(p[2].sum()) for p in placed]
        hidden = [v < MIN_VISIBLE_PIXELS or v < MIN_VISIBLE_FRACTION * n for v, n in zip(visible, full, strict=True)]
        if not any(hidden):
            break
        placed = [p for p, drop in zip(placed, hidden, strict=True) if not drop]

    for _, rgb, alpha, y0, x0 in placed:
        image[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]][alpha] = rgb[alpha]
    instances = [SpriteInstance(p[0], owner == j, n) for j, (p, n) in enumerate(zip(placed, full, strict=True))]
    return SpriteSample(image=np.ascontiguousarray(image), instances=instances)


# ---------------------------------------------------------------- a split on disk


def _coco_annotations(sample: SpriteSample, image_id: int, first_id: int) -> list[dict]:
    anns = []
    for k, inst in enumerate(sample.instances):
        rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": inst.label + 1,
                "segmentation": rle,
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": int(inst.mask.sum()),
                "iscrowd": 0,
            }
        )
    return anns


def _write_split(out: Path, seed: int, split: str, count: int) -> tuple[Path, int, int]:
    """Write one split; return (annotation file, number of instances, number of stale images removed)."""
    images_dir = out / split / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        sample = render_sample(seed, split, index)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(sample.image).save(images_dir / file_name, format="PNG", compress_level=6)
        h, w = sample.image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        annotations += _coco_annotations(sample, image_id, len(annotations) + 1)
    wanted = {im["file_name"] for im in images}
    stale = [p for p in images_dir.iterdir() if re.fullmatch(r"\d{6}\.png", p.name) and p.name not in wanted]
    for p in stale:  # images from an earlier, larger run would otherwise sit unlisted next to the new ones
        p.unlink()
    coco = {
        "info": {"description": DESCRIPTION, "seed": seed, "split": split, "version": 1},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "sprite"} for i, n in enumerate(SPRITE_CLASSES)],
    }
    ann_file = out / split / "annotations.json"
    tmp = ann_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(tmp, ann_file)  # written last and atomically: a present file means a complete split
    return ann_file, len(annotations), len(stale)


def generate_sprites(out: str | os.PathLike, seed: int = 0, n_train: int = 1000, n_val: int = 200) -> dict:
    """Write the train and val splits under ``out``; return {split: annotation file path}.

    See the module docstring for the layout and conventions. Chapter 00 uses the result.
    """
    write_splits(Path(out), seed, {"train": n_train, "val": n_val})
    return {split: Path(out) / split / "annotations.json" for split in SPLITS}


def written_by(path: Path, description: str, *keys: str) -> bool:
    """Whether the JSON file ``path`` holds ``description`` under ``keys``: the mark a generator leaves."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        for key in keys:
            value = value[key]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return value == description


def foreign_content(out: Path, layout: dict[str, str], marker: str, is_ours, marker_required: bool = False
                    ) -> str | None:
    """What in ``out`` a generator did not write (a path), or None if regenerating there is safe.

    Regenerating rewrites and deletes files, so only a missing or empty folder, or one holding exactly what a
    generator writes, is safe. ``layout`` maps every folder it writes (relative to ``out``, ``""`` for ``out``
    itself) to a regular expression of the file names it writes there; files named ``marker`` must pass
    ``is_ours(path)`` (their content marks the folder), and with ``marker_required`` a folder that is not empty
    must hold ``out / marker``.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        return str(out)
    entries = sorted(out.iterdir())
    if marker_required and entries and not (out / marker).is_file():
        return str(entries[0])
    for path in sorted(out.rglob("*")):
        folder = "" if path.parent == out else path.parent.relative_to(out).as_posix()
        if path.is_dir():
            if path.relative_to(out).as_posix() not in layout:
                return str(path)
        elif folder not in layout or not re.fullmatch(layout[folder], path.name):
            return str(path)
        elif path.name == marker and not is_ours(path):
            return str(path)
    return None


# what write_splits writes: annotations.json (and its temporary file while it is written), images/NNNNNN.png
LAYOUT = {name: pattern for split in SPLITS
          for name, pattern in ((split, r"annotations\.json(\.tmp)?"), (f"{split}/images", r"\d{6}\.png"))}


def write_splits(out: Path, seed: int, counts: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """Write the splits ``counts`` names (split -> number of images); return per split (images, instances,
    stale images removed). Refuses a folder holding files this generator did not write."""
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"--{split} must be 0 or more images, got {n}")
    foreign = foreign_content(out, LAYOUT, "annotations.json",
                              lambda path: written_by(path, DESCRIPTION, "info", "description"))
    if foreign is not None:
        raise FileExistsError(f"{out} holds files the sprites generator did not write ({foreign}); it would "
                              "overwrite or delete files there, so choose a new or empty folder")
    stats = {}
    for split, n in counts.items():
        _, n_inst, n_stale = _write_split(out, seed, split, n)
        stats[split] = (n, n_inst, n_stale)
    return stats
