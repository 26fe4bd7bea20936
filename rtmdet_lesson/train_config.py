"""The settings of a training run, ``TrainConfig``, and the rule that moves the learning rate to another batch
(chapter 07).

``TrainConfig`` is the one place a setting is documented: the comment on each field says what it does, and
``python -m rtmdet_lesson train --list-settings`` prints them. Its defaults are the reference's recipe
(mmdetection's ``configs/rtmdet/rtmdet-ins_*_8xb32-300e_coco.py`` and their base ``rtmdet_l_8xb32-300e_coco.py``);
``TrainConfig.for_preset(name)`` starts from the preset's own recipe instead (``presets.RECIPES``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from rtmdet_lesson.presets import PRESETS, RECIPES, ROTATED_PRESETS

REFERENCE_LR = 0.004  # AdamW lr of the official recipe ...
REFERENCE_BATCH = 256  # ... for its total batch of 8 GPUs x 32 images
AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
AUGMENTS = ("reference", "flip", "none")
BOUNDS = (("lr", 0.0, None), ("weight_decay", 0.0, None), ("min_lr_ratio", 0.0, 1.0), ("flat_fraction", 0.0, 1.0),
          ("ema_momentum", 0.0, 1.0), ("warmup_iters", 0, None), ("ema_gamma", 0.0, None), ("workers", 0, None))


def scaled_lr(total_batch: int) -> float:
    """The recipe's lr (0.004 at a total batch of 256) moved to another total batch by the square-root rule.

    Adam-type optimisers scale with the square root of the batch size (the SDE view of Adam, Malladi et al.
    2022), not linearly as SGD does: linear scaling would give 1.25e-4 at a batch of 8, far too slow for a
    short CPU run; the square root gives 7.1e-4 (16: 1.0e-3, 32: 1.4e-3). At 256 it is the recipe's 0.004.
    """
    return REFERENCE_LR * math.sqrt(total_batch / REFERENCE_BATCH)


@dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "derived", see ``resolve``. Chapter 07 walks through them.

    The defaults are the reference's recipe; ``for_preset`` applies a preset's own (``presets.RECIPES``).
    """

    preset: str = "course-sprites"  # the model: a name of presets.PRESETS or presets.ROTATED_PRESETS
    # data: a folder as `python -m rtmdet_lesson data sprites` writes it, or any COCO-format image folder + JSON
    data: str | None = "data/sprites"  # a folder with train/ and val/ splits (rotated presets: DOTA format)
    train_images: str | None = None  # the image folder of any COCO-format training set (instead of data)
    train_annotations: str | None = None  # its COCO instances JSON (rotated presets: the folder of DOTA .txt files)
    val_images: str | None = None  # no val split given: no evaluation, best.pth is not written
    val_annotations: str | None = None  # the val split's COCO JSON (rotated presets: DOTA .txt folder)
    out: str = "runs/train"  # the run's folder: log.jsonl, last.pth, best.pth, final.pth
    # the recipe
    image_size: int | None = None  # square canvas; None: the preset's input_size (320 course, 640 official)
    epochs: int = 300  # passes over the training set
    batch_size: int = 32  # images per process and step; the reference runs 32 on each of 8 GPUs
    lr: float | None = None  # AdamW learning rate; None: scaled_lr(batch_size * world_size), 0.004 at 8 x 32
    weight_decay: float = 0.05  # AdamW weight decay, not on norm parameters or biases
    warmup_iters: int = 1000  # linear warm-up from 1e-5 x lr; at most a tenth of the run
    flat_fraction: float = 0.5  # flat lr for this share of the epochs, then cosine (reference: 150 of 300)
    min_lr_ratio: float = 0.05  # the cosine ends at this share of the base lr
    stage2_epochs: int | None = None  # last epochs without mosaic/mixup; None: 20 of 300, scaled to `epochs`
    augment: str = "reference"  # "reference": the two stages; "flip": letterbox + flip; "none": letterbox only
    # (rotated presets: "reference" = letterbox, flips and quarter turns, "flip" = without the turns)
    mosaic: bool = True  # cached mosaic in stage 1
    mixup: bool = True  # cached mixup in stage 1
    ema: bool = True  # keep an EMA of the weights, and evaluate and export it
    ema_momentum: float = 0.0002  # the EMA's momentum floor
    ema_gamma: float = 2000.0  # the EMA's warm-up constant, in iterations
    eval_interval: int = 10  # epochs between evaluations (every epoch in stage 2, and always after the last)
    save_interval: int = 1  # epochs between last.pth writes (always after the last; max_iters and best too)
    seed: int = 0  # seeds the model, the data order and the augmentation (rank r uses seed + r)
    workers: int = 2  # DataLoader worker processes per training process (0: load in the training process)
    amp: str = "off"  # mixed precision: "off", "fp16" (CUDA, with a grad scaler) or "bf16" (CUDA, or AMX CPUs)
    channels_last: bool = False  # NHWC memory from the stem's last conv on (chapter 09: faster convs on CPU/CUDA)
    single_cls_pass: bool = True  # Ins head: one cls-tower pass where the reference runs two (same math; ch. 09)
    device: str | None = None  # "cpu", "cuda", "mps"; None: CUDA, then MPS, then CPU
    export_half: bool = True  # final.pth stores fp16 weights (half the size; loads back as fp32)
    progress: bool = True  # tqdm progress bar on rank 0

    @classmethod
    def for_preset(cls, preset: str = "course-sprites", **settings) -> TrainConfig:
        """The preset's recipe (``presets.RECIPES``) with ``settings`` over it."""
        if preset not in RECIPES:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(RECIPES)}")
        recipe = dict(RECIPES[preset])
        if recipe.get("stage2_epochs") and "epochs" in settings and "stage2_epochs" not in settings:
            recipe["stage2_epochs"] = min(recipe["stage2_epochs"], settings["epochs"])  # a run shorter than the recipe
        return cls(preset=preset, **{**recipe, **settings})

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """The config a checkpoint stored (``asdict``), leaving out settings that no longer exist."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in known})

    def resolve(self, world_size: int = 1) -> TrainConfig:
        """A copy with every derived setting filled in and checked."""
        presets = {**PRESETS, **ROTATED_PRESETS}
        if self.preset not in presets:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(presets)}")
        image_size = self.image_size if self.image_size is not None else presets[self.preset]["input_size"]
        if image_size < 32 or image_size % 32:
            raise ValueError(f"image size {image_size} is not a positive multiple of 32; try 320 or 640")
        if min(self.epochs, self.batch_size, self.eval_interval, self.save_interval) < 1:
            raise ValueError(f"epochs, batch size, eval and save intervals must be at least 1, got {self.epochs}, "
                             f"{self.batch_size}, {self.eval_interval}, {self.save_interval}")
        for name, low, high in BOUNDS:
            value = getattr(self, name)
            if value is not None and not (value >= low and (high is None or value <= high)):
                bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise ValueError(f"{name} must be {bounds}, got {value}")
        if self.lr is not None and self.lr == 0:
            raise ValueError("lr must be above 0, got 0")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")
        stage2 = self.stage2_epochs if self.stage2_epochs is not None else round(self.epochs * 20 / 300)
        if not 0 <= stage2 <= self.epochs:
            raise ValueError(f"stage2_epochs {stage2} must lie between 0 and epochs ({self.epochs})")
        lr = self.lr if self.lr is not None else scaled_lr(self.batch_size * world_size)
        return TrainConfig(**{**asdict(self), "image_size": image_size, "stage2_epochs": stage2, "lr": lr})

    @property
    def rotated(self) -> bool:
        """Whether the run trains RTMDet-R (rotated boxes, DOTA-format data) rather than RTMDet(-Ins) on COCO."""
        return self.preset in ROTATED_PRESETS
