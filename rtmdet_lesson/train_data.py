"""What a training run reads (chapter 07): the train and val datasets a config names, the augmentation pipeline,
and the DataLoader that feeds the loop.

Two formats, one path: COCO (RTMDet and RTMDet-Ins; ``data/coco.py``) and DOTA (RTMDet-R, chapter 10;
``rotated/dota.py``). Either comes as a dataset folder (``--data DIR`` with ``train/`` and ``val/`` splits, as
``python -m rtmdet_lesson data sprites [--rotated]`` writes it) or as an image folder and its annotations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from rtmdet_lesson.data.coco import CocoInstanceDataset, sprites_split
from rtmdet_lesson.train_config import TrainConfig

log = logging.getLogger("rtmdet_lesson.train")


@dataclass(frozen=True)
class DataFormat:
    """How to open one annotation format: a split of a dataset folder, or an image folder + its annotations."""

    annotations: str  # what --annotations names
    marker: str  # the path inside a split folder that marks the split as present
    generate: str  # the command that writes such a folder
    open_files: Callable  # (images, annotations, class_names or None) -> dataset
    open_split: Callable  # (root, split, class_names or None) -> dataset


def data_format(rotated: bool) -> DataFormat:
    """DOTA for rotated presets, else COCO."""
    if rotated:
        from rtmdet_lesson.rotated.dota import DotaDataset, dota_split

        return DataFormat("the folder of DOTA .txt files", "annfiles", "data sprites --rotated", DotaDataset,
                          dota_split)
    return DataFormat("the COCO instances JSON file", "annotations.json", "data sprites",
                      lambda images, annotations, names: CocoInstanceDataset(images, annotations),
                      lambda root, split, names: sprites_split(root, split))


def build_datasets(config: TrainConfig):
    """The raw train and val datasets named by the config (val is None when none is given or it is empty).

    COCO datasets (``CocoInstanceDataset``) for RTMDet(-Ins) presets, DOTA datasets (``DotaDataset``) for
    rotated ones. The val split uses the training set's classes; a COCO val file with other categories is refused.
    """
    fmt = data_format(config.rotated)
    if config.train_images or config.train_annotations:
        if not (config.train_images and config.train_annotations):
            raise ValueError(f"give both --images (the image folder) and --annotations ({fmt.annotations})")
        train_ds = fmt.open_files(config.train_images, config.train_annotations, None)
        val_ds = None
        if config.val_images or config.val_annotations:
            if not (config.val_images and config.val_annotations):
                raise ValueError("give both val_images and val_annotations, or neither")
            val_ds = fmt.open_files(config.val_images, config.val_annotations, train_ds.class_names)
    elif config.data:
        root = Path(config.data)
        if not (root / "train" / fmt.marker).exists():
            raise FileNotFoundError(
                f"no dataset at {root} (expected {root / 'train' / fmt.marker}); generate the sprites "
                f"with `python -m rtmdet_lesson {fmt.generate} --out {root}`, or train on your own data with --images "
                f"DIR --annotations ({fmt.annotations})"
            )
        train_ds = fmt.open_split(root, "train", None)
        val_ds = fmt.open_split(root, "val", train_ds.class_names) if (root / "val" / fmt.marker).exists() else None
    else:
        raise ValueError("no training data: give --data DIR or --images DIR --annotations FILE")
    if len(train_ds) == 0 or train_ds.num_objects == 0:
        raise ValueError(f"the training set {train_ds.annotation_file} has no images or no annotations")
    if val_ds is not None and val_ds.num_objects == 0:
        log.warning(f"the validation set {val_ds.annotation_file} has no annotations, so its AP is undefined: no "
                    "evaluation, and no best.pth")
        val_ds = None
    if val_ds is not None and list(val_ds.class_names) != list(train_ds.class_names):
        raise ValueError(f"train and val categories differ ({train_ds.class_names} vs {val_ds.class_names}); "
                         "both annotation files need the same 'categories'")
    return train_ds, val_ds


def build_pipeline(config: TrainConfig):
    """The augmentation pipeline ``pipeline(image, target, rng)`` of a (resolved) config.

    "reference": the recipe's stage 1 (mosaic, mixup if enabled, random resize and crop, HSV, flip) switching
    to stage 2 for the last ``stage2_epochs``, with the settings of the preset's size (the course presets use
    tiny's). "flip" and "none" only letterbox (and flip): for checking that a model can fit a few images.
    Rotated presets follow mmrotate's rotated_rtmdet recipe: letterbox, flips and quarter turns (chapter 10).
    """
    from rtmdet_lesson.data import transforms

    size = (config.image_size, config.image_size)
    if config.rotated:
        from rtmdet_lesson.rotated.transforms import RotatedTrainPipeline

        flip, turn = {"reference": (0.75, 0.5), "flip": (0.75, 0.0), "none": (0.0, 0.0)}[config.augment]
        return RotatedTrainPipeline(size, flip_prob=flip, turn_prob=turn)
    if config.augment == "reference":
        recipe = config.preset.rsplit("-", 1)[-1]
        recipe = recipe if recipe in transforms.REFERENCE_AUGMENT else "tiny"
        return transforms.train_pipeline(size, config.epochs, config.stage2_epochs, recipe, config.mosaic, config.mixup)
    flip = [transforms.RandomFlip(0.5)] if config.augment == "flip" else []
    return transforms.Compose([transforms.LetterboxResize(size), *flip])


def build_loader(train_raw, config: TrainConfig, rank: int, world_size: int, device: torch.device) -> DataLoader:
    """The training DataLoader: rank ``rank``'s shard of the data (a ``DistributedSampler`` shuffled by seed and
    epoch) through the augmentation pipeline, in full batches.

    The data order is reproducible: ``AugmentedDataset`` reseeds the augmentation at (seed + rank, epoch,
    worker), and the worker seeds come from their own generator, never from the global RNG. Call
    ``loader.sampler.set_epoch(e)`` and ``loader.dataset.set_epoch(e)`` before each epoch.
    """
    from rtmdet_lesson.data.collate import AugmentedDataset, collate, worker_init_fn

    sampler = DistributedSampler(train_raw, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed)
    if len(sampler) < config.batch_size:
        raise ValueError(f"{len(train_raw)} training images give {len(sampler)} per process, fewer than the "
                         f"batch size {config.batch_size}; lower --batch-size")
    return DataLoader(
        AugmentedDataset(train_raw, build_pipeline(config), seed=config.seed + rank),
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn,
        pin_memory=device.type == "cuda",
        drop_last=True,  # every batch is full
        generator=torch.Generator().manual_seed(config.seed + rank),
    )
