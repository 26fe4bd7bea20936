"""Reading image files as 8-bit RGB, the one way every entry point does it (chapters 00, 07 and 08).

Pillow opens many kinds of file, but ``image.convert("RGB")`` is only right for 8-bit ones: a 16-bit PNG
(common for medical, microscopy and depth images) is clipped at 255 and comes out all white. Here 16-bit
images are scaled to 8 bits over their full range (0-65535 -> 0-255, rounded), palette images with
transparency go through RGBA, and images whose value range cannot be known (32-bit float ``F``, 32-bit
integers beyond 16 bits) are refused with a message instead of being silently wrong. As in the reference
(mmcv's ``imread``), an alpha channel is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """Integers 0-65535 -> uint8 0-255, rounded to the nearest (65535 -> 255, 257 -> 1)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def pil_to_rgb_array(image: Image.Image, name: str = "the image") -> np.ndarray:
    """A Pillow image as an (H, W, 3) uint8 RGB array, scaling 16-bit images; ValueError for unknown ranges."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)  # (H, W) integers
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"{name} is a 32-bit integer image with values {values.min()}..{values.max()}, beyond 16 bits; "
                "convert it to 8-bit RGB yourself (you know which range matters), e.g. with numpy and Pillow"
            )
        return np.repeat(_scale_16_to_8(values)[:, :, None], 3, axis=2)  # grey -> (H, W, 3)
    if image.mode == "F":
        raise ValueError(
            f"{name} is a floating-point image (Pillow mode F) whose value range is unknown; convert it to "
            "8-bit RGB yourself, e.g. (255 * (x - lo) / (hi - lo)).clip(0, 255).astype('uint8')"
        )
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the palette's transparency is only understood through RGBA
    return np.asarray(image.convert("RGB"))  # (H, W, 3); alpha dropped, CMYK and grey converted


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image file at ``path`` as an (H, W, 3) uint8 RGB array, with a one-line error naming the file.

    Raises FileNotFoundError for a missing path, IsADirectoryError for a folder, ValueError for a file that is
    not an image, is truncated or corrupt, or has a value range that cannot be mapped to 8 bits.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder, not an image file; give image files, or a folder "
                                "to predict (it reads every image in it)")
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist; check the path")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so that a truncated file fails here with its name
            return pil_to_rgb_array(image, f"image file {str(path)!r}")
    except UnidentifiedImageError as error:
        raise ValueError(f"{str(path)!r} is not an image file Pillow can read ({error})") from error
    except OSError as error:  # "image file is truncated", broken data streams
        raise ValueError(f"cannot read image file {str(path)!r}: {error} (is it truncated or corrupt?)") from error


def images_in_folder(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (by suffix, see ``IMAGE_SUFFIXES``), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def expand_inputs(paths: list[str]) -> list[Path]:
    """The image files named on a command line, each folder replaced by the images inside it (sorted)."""
    files = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist; check the path")
        if path.is_dir():
            found = images_in_folder(path)
            if not found:
                raise FileNotFoundError(f"the folder {str(path)!r} holds no image files")
            files += found
        else:
            files.append(path)
    return files


def output_names(inputs: list[Path], out: Path) -> list[Path]:
    """One drawing per input, ``OUT/<stem>.pred.png``, never an input's path and never another output's.

    Two inputs with the same stem (``a/x.png``, ``b/x.jpg``) get ``x.pred.png`` and ``x-2.pred.png``.
    """
    taken = {path.resolve() for path in inputs} | {(out / "results.json").resolve()}
    names = []
    for path in inputs:
        candidate, n = out / f"{path.stem}.pred.png", 1
        while candidate.resolve() in taken:
            n += 1
            candidate = out / f"{path.stem}-{n}.pred.png"
        taken.add(candidate.resolve())
        names.append(candidate)
    return names
