"""From samples to batches: the augmented dataset, ``collate`` and per-worker seeding (chapter 07).

Randomness is explicit. ``AugmentedDataset`` owns a ``numpy.random.Generator`` seeded from
(seed, epoch, worker id) and hands it to the pipeline, so an epoch's augmentations depend only on those
three numbers and on the sampler's order: re-running or resuming an epoch reproduces it.

With ``num_workers > 0`` every worker gets its own copy of the dataset, pipeline and mosaic/mixup caches;
``worker_init_fn`` reseeds that copy from its worker id. Keep ``persistent_workers=False`` (the default) and
call ``set_epoch`` before iterating: each epoch's workers then start from the epoch's seed and stage, and
their caches start empty (the first few samples of a worker pass mosaic unchanged while it fills).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import get_worker_info


class AugmentedDataset(torch.utils.data.Dataset):
    """A dataset seen through an augmentation pipeline, with its own random generator.

    ``dataset[i]`` gives a sample ``(image, target)``; ``pipeline(image, target, rng)`` is a
    ``transforms.Compose`` or ``transforms.TwoStagePipeline``. ``set_epoch`` also moves a two-stage pipeline to
    the epoch's stage.
    """

    def __init__(self, dataset, pipeline, seed: int = 0):
        self.dataset, self.pipeline, self.seed, self.epoch = dataset, pipeline, seed, 0
        self.reseed(0)

    def reseed(self, worker_id: int = 0) -> None:
        """Restart the generator at (seed, epoch, worker_id) and empty the pipeline's caches."""
        self.rng = np.random.default_rng([self.seed, self.epoch, worker_id])
        if hasattr(self.pipeline, "reset"):
            self.pipeline.reset()

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (before creating the DataLoader iterator)."""
        self.epoch = epoch
        if hasattr(self.pipeline, "set_epoch"):
            self.pipeline.set_epoch(epoch)
        self.reseed(0)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return self.pipeline(image, target, self.rng)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader hook: seed this worker from the base seed and its id.

    An ``AugmentedDataset`` (the worker's own copy) restarts its generator at (seed, epoch, worker_id), so
    each worker's mosaic cache is its own and reproducible. Python's and NumPy's global generators are seeded
    from torch's per-worker seed (the DataLoader's base seed + worker id) for any other code that uses them.
    """
    info = get_worker_info()
    if info is None:
        raise ValueError(
            "worker_init_fn runs inside DataLoader workers only; pass it as DataLoader(worker_init_fn=...)."
        )
    if hasattr(info.dataset, "reseed"):
        info.dataset.reseed(worker_id)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def collate(samples: list) -> tuple[torch.Tensor, list[dict]]:
    """[(image (3, H, W) uint8, target dict), ...] -> (images (B, 3, H, W) uint8, [target, ...]).

    Targets stay a list because every image has its own number of instances G. All images must have the same
    size.
    """
    if not samples:
        raise ValueError("collate got an empty batch; check the sampler and the dataset length.")
    images, targets = zip(*samples, strict=True)
    sizes = sorted({tuple(image.shape) for image in images})
    if len(sizes) > 1:
        raise ValueError(
            f"The images of a batch differ in size {sizes}; use a pipeline that pads to a fixed size "
            "(transforms.build_train_pipeline / train_pipeline / eval_pipeline all do)."
        )
    return torch.stack(images), list(targets)  # (B, 3, H, W)
