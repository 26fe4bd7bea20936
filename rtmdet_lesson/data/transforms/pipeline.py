"""The pipelines: ``Compose``, the training stages of the reference and the evaluation letterbox (chapter 07).

mmdetection's RTMDet configs (``configs/rtmdet/rtmdet-ins_*.py``, ``train_pipeline`` and
``train_pipeline_stage2``) train with two pipelines: stage 1 (mosaic -> random resize -> crop -> HSV -> flip ->
pad -> mixup -> filter) and, for the last epochs, stage 2, the same without mosaic and mixup;
``PipelineSwitchHook`` (``mmdet/engine/hooks/pipeline_switch_hook.py``) switches. ``build_train_pipeline``
builds either stage, ``train_pipeline`` both with the switch, ``eval_pipeline`` the test-time letterbox.
"""

from __future__ import annotations

import numpy as np

from rtmdet_lesson.data.transforms.colour import RandomHSV
from rtmdet_lesson.data.transforms.geometry import LetterboxResize, Pad, RandomFlip, RandomResizeCrop
from rtmdet_lesson.data.transforms.mix import CachedMixUp, CachedMosaic
from rtmdet_lesson.data.transforms.samples import FilterAnnotations, check_sample

# The reference's augmentation settings per model size (configs/rtmdet/rtmdet-ins_{tiny,s,m,l,x}_8xb32-300e_coco.py):
# the random-resize ratio range, the two caches (size, random pop vs FIFO) and the mixup probability.
_TINY = dict(
    ratio_range=(0.5, 2.0),
    mosaic_max_cached=20,
    mosaic_random_pop=False,
    mixup_max_cached=10,
    mixup_random_pop=False,
    mixup_prob=0.5,
)
_SMALL = dict(
    ratio_range=(0.5, 2.0),
    mosaic_max_cached=40,
    mosaic_random_pop=True,
    mixup_max_cached=20,
    mixup_random_pop=True,
    mixup_prob=1.0,
)
_LARGE = dict(_SMALL, ratio_range=(0.1, 2.0))  # "large-scale jitter" for m, l and x
REFERENCE_AUGMENT = {"tiny": _TINY, "s": _SMALL, "m": _LARGE, "l": _LARGE, "x": _LARGE}


class Compose:
    """Run transforms in order: ``pipeline(image, target, rng) -> (image, target)``.

    ``rng`` is a ``numpy.random.Generator`` passed in explicitly (no global random state), so a run is
    reproducible and resumable from its seed. The input sample is checked once; ``reset()`` empties the caches
    of mosaic and mixup.
    """

    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __call__(self, image, target, rng: np.random.Generator):
        if not isinstance(rng, np.random.Generator):
            raise ValueError(
                f"Pipelines take an explicit numpy Generator, got {type(rng).__name__}; "
                "pass rng=numpy.random.default_rng(seed)."
            )
        check_sample(image, target)
        for transform in self.transforms:
            image, target = transform(image, target, rng)
        return image, target

    def reset(self) -> None:
        for transform in self.transforms:
            if hasattr(transform, "reset"):
                transform.reset()

    def __repr__(self) -> str:
        return "Compose(" + " -> ".join(type(t).__name__ for t in self.transforms) + ")"


def build_train_pipeline(
    image_size: int | tuple[int, int], stage: int = 1, mosaic: bool = True, mixup: bool = True, recipe: str = "s"
) -> Compose:
    """Training stage 1 or 2 at a square ``image_size`` (or (h, w)) with the settings of ``recipe`` (a model size).

    Stage 1: mosaic -> random resize -> crop -> HSV -> flip -> pad -> mixup -> filter. The mosaic canvas is twice
    the training canvas and is the random resize's scale. ``mosaic=False`` / ``mixup=False`` leave those steps
    out (mosaic is the slow step on a CPU, mmdetection #8196); without mosaic the resize scale is the canvas itself.
    Stage 2 is stage 1 without mosaic and mixup, whatever those two flags say.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if recipe not in REFERENCE_AUGMENT:
        raise ValueError(f"Unknown recipe {recipe!r}; choose one of {sorted(REFERENCE_AUGMENT)}.")
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (mosaic + mixup) or 2 (the light pipeline), got {stage}.")
    settings = REFERENCE_AUGMENT[recipe]
    mosaic, mixup = mosaic and stage == 1, mixup and stage == 1
    steps = []
    if mosaic:
        steps.append(CachedMosaic(size, max_cached=settings["mosaic_max_cached"],
                                  random_pop=settings["mosaic_random_pop"]))
    scale = (2 * size[0], 2 * size[1]) if mosaic else size
    steps += [RandomResizeCrop(scale, settings["ratio_range"], size), RandomHSV(), RandomFlip(0.5), Pad(size)]
    if mixup:
        steps.append(CachedMixUp(size, max_cached=settings["mixup_max_cached"],
                                 random_pop=settings["mixup_random_pop"], prob=settings["mixup_prob"]))
    return Compose([*steps, FilterAnnotations((1, 1))])


def eval_pipeline(size: tuple[int, int] = (640, 640)) -> Compose:
    """Letterbox into ``size`` (keep ratio, grey padding at the bottom/right); nothing random."""
    return Compose([LetterboxResize(size)])


class TwoStagePipeline:
    """Stage 1 until ``switch_epoch``, then stage 2 (the reference's ``PipelineSwitchHook``).

    Call ``set_epoch(epoch)`` before each epoch (``collate.AugmentedDataset.set_epoch`` does): the switch happens
    at the start of epoch index ``switch_epoch`` (280 of 300 in the reference).
    """

    def __init__(self, stage1: Compose, stage2: Compose, switch_epoch: int):
        self.stage1, self.stage2, self.switch_epoch, self.epoch = stage1, stage2, switch_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def current(self) -> Compose:
        return self.stage2 if self.epoch >= self.switch_epoch else self.stage1

    def __call__(self, image, target, rng: np.random.Generator):
        return self.current(image, target, rng)

    def reset(self) -> None:
        self.stage1.reset()
        self.stage2.reset()


def train_pipeline(
    size: tuple[int, int] = (640, 640),
    max_epochs: int = 300,
    stage2_epochs: int = 20,
    recipe: str = "s",
    mosaic: bool = True,
    mixup: bool = True,
) -> TwoStagePipeline:
    """Both training stages of ``build_train_pipeline``, switching ``stage2_epochs`` before the end (20 of 300)."""
    return TwoStagePipeline(
        build_train_pipeline(size, 1, mosaic=mosaic, mixup=mixup, recipe=recipe),
        build_train_pipeline(size, 2, recipe=recipe),
        switch_epoch=max_epochs - stage2_epochs,
    )
