"""Reading rotated-box datasets in DOTA's text format (chapter 10).

DOTA (Xia et al., CVPR 2018; the DOTA devkit's ``dota_utils.parse_dota_poly``) annotates each image with one
text file, one object a line::

    x1 y1 x2 y2 x3 y3 x4 y4 class difficult

the four corners the annotator clicked (pixels, going round the object), the class name, and 1 for objects
that are hard to recognise (0 otherwise; a missing flag means 0). The original DOTA files start with two
header lines, ``imagesource:...`` and ``gsd:...``; they are skipped, as the devkit does. mmrotate's DOTA
loader (``mmrotate/datasets/dota.py``) reads a folder of such files (``annfiles/``) next to an image folder,
the image named like its text file. The corners become the le90 box ``(cx, cy, w, h, angle)`` of their
minimum-area rectangle (``geometry.min_area_rbox``, what mmrotate's ``qbox2rbox`` gets from
``cv2.minAreaRect``).

Training keeps difficult objects (mmrotate's default ``diff_thr=100`` keeps all); the DOTA evaluation ignores
them (``rotated.metric``), so the flag travels with every sample as ``target["difficult"]``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from rtmdet_lesson.image_files import IMAGE_SUFFIXES, read_rgb
from rtmdet_lesson.rotated.geometry import min_area_rbox

log = logging.getLogger(__name__)

HEADERS = ("imagesource:", "gsd:")
FORMAT = "x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]"


def parse_dota_file(path: str | os.PathLike) -> list[tuple[list[float], str, bool]]:
    """The objects of one DOTA annotation file: ``[(corners (8 floats), class name, difficult), ...]``.

    Blank lines and the ``imagesource:`` / ``gsd:`` headers are skipped. Any other line that is not eight
    numbers, a class name and an optional 0/1 flag raises a ValueError naming the file and the line.
    """
    path = Path(path)
    objects = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].lower().startswith(HEADERS):
            continue
        where = f"{path}, line {number}"
        if len(fields) not in (9, 10):
            raise ValueError(f"{where}: expected '{FORMAT}', got {len(fields)} fields ({line.strip()!r})")
        try:
            coords = [float(v) for v in fields[:8]]
        except ValueError:
            raise ValueError(f"{where}: the first eight fields must be numbers (corner x, y), got "
                             f"{' '.join(fields[:8])!r}") from None
        if not all(np.isfinite(coords)):
            raise ValueError(f"{where}: corner coordinates must be finite, got {' '.join(fields[:8])!r}")
        flag = fields[9] if len(fields) == 10 else "0"
        if flag not in ("0", "1"):
            raise ValueError(f"{where}: the difficult flag must be 0 or 1, got {flag!r}")
        objects.append((coords, fields[8], flag == "1"))
    return objects


class DotaDataset:
    """A DOTA-format split: ``images_dir`` + ``ann_dir`` with one ``NAME.txt`` per image ``NAME.png`` (any image
    suffix). Chapter 10 builds this.

    ``dataset[i] -> (image uint8 (3, H, W) RGB, target)`` with ``rboxes`` float32 (G, 5) (cx, cy, w, h,
    angle in le90 radians), ``labels`` int64 (G,), ``difficult`` bool (G,), ``polygons`` float32 (G, 4, 2) (the
    corners as annotated), ``image_id`` (position + 1) and ``file_name``.

    Args:
        images_dir: the image folder.
        ann_dir: the folder of annotation files (mmrotate calls it ``annfiles``).
        class_names: label i is ``class_names[i]``; a class found in the files but not listed is an error. None:
            the names in ``DIR/dataset.json`` one level above the split (as the rotated sprites write it), else
            every name found in the files, sorted.

    Polygons whose minimum-area rectangle has no area (all corners on a line) are skipped with a warning, as
    mmrotate's loader skips polygons it cannot convert.
    """

    def __init__(self, images_dir: str | os.PathLike, ann_dir: str | os.PathLike,
                 class_names: list[str] | tuple[str, ...] | None = None):
        self.images_dir, self.ann_dir = Path(images_dir), Path(ann_dir)
        self.annotation_file = self.ann_dir  # what error messages and the training loop name
        if not self.ann_dir.is_dir():
            raise FileNotFoundError(f"no annotation folder {self.ann_dir}; a DOTA split has images/ and annfiles/ "
                                    "(one NAME.txt per image NAME.png)")
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"no image folder {self.images_dir}; a DOTA split has images/ and annfiles/")
        files = sorted(p for p in self.ann_dir.iterdir() if p.suffix == ".txt")
        images = {}
        for p in self.images_dir.iterdir():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                images.setdefault(p.stem, p)
        self.records = []  # (image path, [(corners, name, difficult), ...])
        for ann_file in files:
            if ann_file.stem not in images:
                raise FileNotFoundError(f"{ann_file} has no image {ann_file.stem}.png (or another image suffix) in "
                                        f"{self.images_dir}; every annotation file needs its image")
            self.records.append((images[ann_file.stem], parse_dota_file(ann_file)))
        found = sorted({name for _, objects in self.records for _, name, _ in objects})
        if class_names is None:
            class_names = _names_from_marker(self.ann_dir.parent.parent) or found
        self.class_names = list(class_names)
        unknown = [name for name in found if name not in self.class_names]
        if unknown:
            raise ValueError(f"{self.ann_dir} has classes {unknown} that are not among the class names "
                             f"{self.class_names}; give the full list of class names")
        self.name_to_label = {name: i for i, name in enumerate(self.class_names)}
        # DOTA has no numeric category ids; checkpoints keep these (1-based positions) next to the names
        self.label_to_category_id = {i: i + 1 for i in range(len(self.class_names))}
        self._targets = [self._target(k) for k in range(len(self.records))]
        self.num_objects = sum(len(t["labels"]) for t in self._targets)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        return self.records[index][0]

    def load_image(self, index: int) -> torch.Tensor:
        """The image as a uint8 (3, H, W) RGB tensor."""
        array = read_rgb(self.image_path(index))  # (H, W, 3)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (3, H, W)

    def _target(self, index: int) -> dict:
        path, objects = self.records[index]
        corners = torch.tensor([c for c, _, _ in objects], dtype=torch.float64).reshape(-1, 4, 2)  # (G, 4, 2)
        rboxes = min_area_rbox(corners)  # (G, 5) in float64, then float32
        keep = (rboxes[:, 2] > 0) & (rboxes[:, 3] > 0)
        if not bool(keep.all()):
            log.warning(f"{self.ann_dir / (path.stem + '.txt')}: skipping {int((~keep).sum())} polygon(s) with no "
                        "area (corners on a line)")
        labels = torch.tensor([self.name_to_label[name] for _, name, _ in objects], dtype=torch.int64)
        difficult = torch.tensor([d for _, _, d in objects], dtype=torch.bool)
        return {
            "rboxes": rboxes[keep].float(),  # (G, 5)
            "labels": labels[keep],  # (G,)
            "difficult": difficult[keep],  # (G,)
            "polygons": corners[keep].float(),  # (G, 4, 2)
            "image_id": index + 1,
            "file_name": path.name,
        }

    def target(self, index: int) -> dict:
        """The annotations of image ``index`` without reading the image (what evaluation needs)."""
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in self._targets[index].items()}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self.load_image(index), self.target(index)


def _names_from_marker(root: Path) -> list[str] | None:
    """The class names a dataset folder declares in its ``dataset.json`` (the rotated sprites), or None."""
    marker = root / "dataset.json"
    if not marker.is_file():
        return None
    try:
        names = json.loads(marker.read_text(encoding="utf-8")).get("classes")
    except (ValueError, AttributeError):
        return None
    return list(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def dota_split(root: str | os.PathLike, split: str, class_names=None) -> DotaDataset:
    """One split of a DOTA-format dataset folder (``ROOT/SPLIT/images`` + ``ROOT/SPLIT/annfiles``), as
    ``python -m rtmdet_lesson data sprites --rotated --out ROOT`` writes it."""
    root = Path(root)
    if not (root / split / "annfiles").is_dir():
        raise FileNotFoundError(f"no '{split}' split at {root} ({root / split / 'annfiles'} is missing); generate the "
                                f"rotated sprites with `python -m rtmdet_lesson data sprites --rotated --out {root}`")
    return DotaDataset(root / split / "images", root / split / "annfiles", class_names)

