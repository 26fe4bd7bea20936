"""Any COCO-format instance dataset as (image, target) pairs of tensors (chapters 00 and 07).

Works on the generated sprites (``sprites_split``) and on real COCO alike. Category ids become labels in
one explicit step: the sorted category ids map to 0..C-1 (COCO's 80 ids run 1..90 with gaps, so "id - 1"
is wrong; a silent mismatch here is the classic cause of box and mask losses stuck at zero: mmdetection issues
#11148 and #2942).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from rtmdet_lesson.image_files import read_rgb

REGENERATE = "python -m rtmdet_lesson data sprites --out DIR"


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as an (H, W) uint8 mask of 0/1.

    Polygons are a list of flat [x1, y1, x2, y2, ...] lists, merged into one mask; uncompressed RLE has
    ``counts`` as a list of run lengths, compressed RLE as a string. Check the input with
    ``segmentation_problem`` first: pycocotools does not complain about malformed input.
    """
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse_duplicates(ids: list, what: str, where: str) -> None:
    seen = set()
    for value in ids:
        if value in seen:
            raise ValueError(f"{what} {value!r} {where} occurs more than once; every {what} must be unique "
                             "(COCO tools key by it and would silently drop the others)")
        seen.add(value)


def segmentation_problem(segmentation, height: int, width: int) -> str | None:
    """What is wrong with a segmentation for an image of (height, width), or None if it decodes cleanly."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "has an empty polygon list"
        for poly in segmentation:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) if isinstance(poly, list) else type(poly).__name__
                return f"has a polygon with {n} numbers (a polygon needs an even count, at least 6: 3 points)"
            if not all(_is_number(v) for v in poly):
                return "has a polygon with values that are not numbers"
        return None
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        return "is neither a list of polygons nor an RLE dict with 'size' and 'counts'"
    if list(segmentation["size"]) != [height, width]:
        return f"is an RLE of size {list(segmentation['size'])} but the image is [{height}, {width}] (H, W)"
    counts = segmentation["counts"]
    if isinstance(counts, list) and sum(counts) != height * width:
        return f"is an uncompressed RLE whose runs add up to {sum(counts)} pixels, not H*W = {height * width}"
    if not isinstance(counts, (list, str, bytes)):
        return f"is an RLE whose counts are a {type(counts).__name__} (expected a list or a string)"
    try:
        decoded = decode_segmentation(segmentation, height, width)
    except (ValueError, TypeError) as error:  # pycocotools: "Invalid RLE mask representation"
        return f"does not decode ({error})"
    if decoded.shape != (height, width):
        return f"decodes to shape {decoded.shape}, not the image's ({height}, {width})"
    return None


class CocoInstanceDataset:
    """Instance-segmentation samples from a COCO annotation file and its image folder.

    ``ds[i] -> (image, target)``: image is a uint8 (3, H, W) RGB tensor; target is a dict with
    boxes float32 (G, 4) x1y1x2y2 in pixels (x2 = x + w, exclusive), labels int64 (G,) contiguous from 0,
    masks bool (G, H, W) and image_id (int). Images without objects are kept, with boxes (0, 4),
    labels (0,) and masks (0, H, W): they teach the model what background looks like.

    What is left out of the targets, and why:

    - ``iscrowd`` annotations are skipped: one crowd region covers many objects, which the assigner cannot
      treat as one instance (the reference ignores them in training too; COCOeval still uses them).
    - An annotation whose mask decodes to no pixels, or whose box is thinner than one pixel, is skipped
      with a ``warnings.warn`` naming the annotation id and image file. It cannot be learned as a mask, and
      keeping it would teach the mask head to predict nothing inside a box; raising would make a whole
      real-world dataset unusable for a handful of degenerate labels. The warning keeps it visible.

    Everything else is checked when the dataset is opened and fails with a message that names the file and
    the fix: a missing file, JSON that is not COCO, an unknown category id, a malformed segmentation.

    Attributes: ``coco`` (pycocotools COCO), ``ids`` (image ids in order), ``class_names`` (index = label),
    ``label_to_category_id`` and ``category_id_to_label``. Chapter 00 introduces it, chapter 07 trains on it.
    """

    def __init__(self, images_dir: str | os.PathLike, annotation_file: str | os.PathLike):
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(
                f"annotation file {self.annotation_file} not found; for the sprites dataset generate it with "
                f"`{REGENERATE}`, otherwise check the --annotations path"
            )
        if not self.images_dir.is_dir():
            raise FileNotFoundError(
                f"image folder {self.images_dir} not found; for the sprites dataset generate it with "
                f"`{REGENERATE}`, otherwise check the --images path"
            )
        data = self._read_json()
        self._check(data)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs)
        category_ids = sorted(self.coco.cats)
        self.class_names = [self.coco.cats[c]["name"] for c in category_ids]
        self.label_to_category_id = dict(enumerate(category_ids))
        self.category_id_to_label = {c: label for label, c in self.label_to_category_id.items()}

    def _read_json(self) -> dict:
        try:
            data = json.loads(self.annotation_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.annotation_file} is not valid JSON ({err}); point at a COCO JSON file") from err
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
        if missing:
            raise ValueError(
                f"{self.annotation_file} is not a COCO instances file: it lacks the key(s) {missing}; expected a "
                "JSON object with 'images', 'annotations' and 'categories' (like instances_val2017.json)"
            )
        return data

    def _check(self, data: dict) -> None:
        where = f"in {self.annotation_file}"
        for key in ("images", "annotations", "categories"):
            if not isinstance(data[key], list):
                raise ValueError(f"'{key}' {where} is a {type(data[key]).__name__}, expected a list")
        for img in data["images"]:
            missing = [k for k in ("id", "file_name", "height", "width") if k not in img]
            if missing:
                raise ValueError(f"image entry {img.get('id', img)} {where} lacks {missing}; COCO images need them")
        for cat in data["categories"]:
            if "id" not in cat or "name" not in cat:
                raise ValueError(f"category entry {cat} {where} needs an 'id' and a 'name'")
        _refuse_duplicates([img["id"] for img in data["images"]], "image id", where)
        images = {img["id"]: img for img in data["images"]}
        category_ids = {cat["id"] for cat in data["categories"]}
        for position, ann in enumerate(data["annotations"]):
            if "id" not in ann:
                raise ValueError(f"annotation number {position} (counting from 0) {where} has no 'id'; COCO "
                                 "evaluation keys annotations by id, so give every annotation a unique one")
        # pycocotools keys annotations by id: a repeated id silently drops annotations from evaluation
        _refuse_duplicates([ann["id"] for ann in data["annotations"]], "annotation id", where)
        for ann in data["annotations"]:
            aid = ann["id"]
            if ann.get("category_id") not in category_ids:
                raise ValueError(
                    f"annotation {aid} {where} has category_id {ann.get('category_id')}, which is not among the "
                    f"file's categories {sorted(category_ids)}; add it to 'categories' or fix the annotation"
                )
            img = images.get(ann.get("image_id"))
            if img is None:
                raise ValueError(f"annotation {aid} {where} refers to image_id {ann.get('image_id')}, not in 'images'")
            if ann.get("iscrowd", 0):
                continue
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                raise ValueError(f"annotation {aid} {where} needs 'bbox' as four numbers [x, y, w, h], got {bbox!r}")
            if "segmentation" not in ann:
                raise ValueError(f"annotation {aid} {where} has no 'segmentation'; instance masks are required")
            problem = segmentation_problem(ann["segmentation"], img["height"], img["width"])
            if problem is None and "area" not in ann:  # COCOeval sorts objects into small/medium/large by area
                ann["area"] = float(decode_segmentation(ann["segmentation"], img["height"], img["width"]).sum())
            if problem:
                raise ValueError(
                    f"annotation {aid} (image {img['file_name']}) {where}: its segmentation {problem}; fix or "
                    "remove that annotation"
                )

    @property
    def num_objects(self) -> int:
        """The number of annotations in the file."""
        return len(self.coco.anns)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def load_image(self, index: int) -> torch.Tensor:
        """The image as a uint8 (3, H, W) RGB tensor (grey or RGBA files are converted)."""
        info, path = self.coco.imgs[self.ids[index]], self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(
                f"image file {path} (image id {info['id']} in {self.annotation_file}) not found; for the sprites "
                f"dataset regenerate it with `{REGENERATE}`, otherwise check that --images points at the folder "
                "holding the files the annotation file names"
            )
        array = read_rgb(path)  # (H, W, 3) uint8; 16-bit files scaled, unreadable ones named
        if array.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"image {path} is {array.shape[0]}x{array.shape[1]} (HxW) but {self.annotation_file} says "
                f"{info['height']}x{info['width']}; the annotations belong to another version of the image"
            )
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (3, H, W); numpy's copy is faster

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image = self.load_image(index)
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        boxes, labels, masks = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            mask = decode_segmentation(ann["segmentation"], h, w)
            x, y, bw, bh = ann["bbox"]
            if not mask.any() or bw < 1 or bh < 1:
                warnings.warn(
                    f"skipping annotation {ann['id']} of image {info['file_name']} in {self.annotation_file}: "
                    f"{'its mask is empty' if not mask.any() else f'its box is {bw}x{bh} px'}",
                    stacklevel=2,
                )
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.category_id_to_label[ann["category_id"]])
            masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),  # (G, 4)
            "labels": torch.tensor(labels, dtype=torch.int64),  # (G,)
            "masks": torch.from_numpy(np.stack(masks).astype(bool))
            if masks
            else torch.zeros(0, h, w, dtype=torch.bool),
            "image_id": int(image_id),
        }
        return image, target


def sprites_split(root: str | os.PathLike, split: str) -> CocoInstanceDataset:
    """One split of a dataset folder as ``python -m rtmdet_lesson data sprites --out ROOT`` writes it."""
    root = Path(root)
    ann_file = root / split / "annotations.json"
    if not ann_file.is_file():
        raise FileNotFoundError(
            f"no '{split}' split at {root} ({ann_file} is missing); generate the sprites with "
            f"`python -m rtmdet_lesson data sprites --out {root}`"
        )
    return CocoInstanceDataset(root / split / "images", ann_file)
