"""Decoded training samples kept in memory: each image and its masks decoded once, not once per epoch (chapter 09).

Reading a sample means decoding its PNG or JPEG and rasterising every polygon or RLE into a mask: about 3 ms
per 288x256 sprite image on a 2-CPU machine, against 0.2 ms from the cache (``bench_speed.py --pieces``).
``DecodedCache`` decodes the whole dataset up front, stores the images as uint8 tensors and the masks packed
eight pixels to a byte (a mask costs H * W / 8 bytes), and hands out copies, so the augmentation can do what it
likes with them. The samples are the dataset's own, value for value (``tests/test_cache.py``).

It is filled in the training process, before any DataLoader worker is forked: forked workers read the same pages
(copy-on-write), so the cache is held once however many workers there are. It is for datasets that fit in
memory, like the sprites (1000 training images: 232 MiB); COCO's 118k training images would need about 100 GB,
and the cache refuses up front to take more than half of the memory the machine has available.
``train --fast`` caches when the training set fits (``--cache-images auto``) and says so when it does not.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

MEMORY_SHARE = 0.5  # the most of the available memory a cache may take


def packed_bytes(dataset) -> int:
    """Bytes a ``DecodedCache`` of ``dataset`` (a ``CocoInstanceDataset``) will hold, from its annotation file
    alone: 3 * H * W per image and H * ceil(W / 8) per non-crowd annotation (exact unless the dataset skips
    degenerate annotations, which only makes it an overestimate)."""
    total = 0
    for image_id in dataset.ids:
        info = dataset.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        masks = sum(1 for ann in dataset.coco.imgToAnns.get(image_id, []) if not ann.get("iscrowd", 0))
        total += 3 * h * w + masks * h * math.ceil(w / 8)
    return total


def available_memory_bytes() -> int | None:
    """Memory the system can give this process now (Linux's MemAvailable), or None where it cannot tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def too_big(dataset, memory_share: float = MEMORY_SHARE) -> str | None:
    """Why a ``DecodedCache`` of ``dataset`` would take more than ``memory_share`` of the available memory, or None
    if it fits (or the available memory cannot be told)."""
    needed, available = packed_bytes(dataset), available_memory_bytes()
    if available is None or needed <= memory_share * available:
        return None
    return (f"caching the decoded images of {dataset.annotation_file} needs about {needed / 2**30:.1f} GiB, more "
            f"than {memory_share:.0%} of the {available / 2**30:.1f} GiB available")


class DecodedCache(torch.utils.data.Dataset):
    """A ``CocoInstanceDataset`` decoded once into memory; ``cache[i]`` equals ``dataset[i]``. Chapter 09.

    ``seconds`` and ``nbytes`` say what filling it cost. ``class_names`` is the dataset's.
    """

    def __init__(self, dataset, memory_share: float = MEMORY_SHARE):
        reason = too_big(dataset, memory_share)
        if reason:
            raise MemoryError(f"{reason}; train with --cache-images off (each image is then decoded when it is used)")
        start = time.perf_counter()
        self.class_names = dataset.class_names
        self.annotation_file = dataset.annotation_file
        self.samples = [_pack(*dataset[i]) for i in range(len(dataset))]
        self.seconds = time.perf_counter() - start
        self.nbytes = sum(image.numel() + masks.nbytes for image, _, masks, _ in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target, packed, width = self.samples[index]
        masks = torch.from_numpy(np.unpackbits(packed, axis=-1, count=width)).view(torch.bool)  # (G, H, W)
        target = {k: v.clone() if torch.is_tensor(v) else v for k, v in target.items()}
        return image.clone(), {**target, "masks": masks}


def _pack(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict, np.ndarray, int]:
    """(image, target) -> (image, target without masks, masks packed along W as uint8 (G, H, ceil(W / 8)), W)."""
    masks = target["masks"]  # bool (G, H, W)
    packed = np.packbits(masks.numpy(), axis=-1)
    rest = {k: v for k, v in target.items() if k != "masks"}
    return image, rest, packed, masks.shape[-1]
