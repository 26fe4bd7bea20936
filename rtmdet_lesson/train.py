"""The training loop: data, AdamW, warm-up + flat + cosine schedule, EMA, checkpoints, torchrun (chapter 07).

One function, ``train(config)``, runs the reference recipe (mmdetection's configs/rtmdet/rtmdet_l_8xb32-300e_coco.py)
on one CPU, one GPU or many processes under ``torchrun``:

    for each epoch:                      stage 1 (mosaic, mixup) ... stage 2 (light pipeline) for the last epochs
        for each batch:                  images (B, 3, S, S) uint8 RGB + one target dict per image
            lr <- schedule(iteration)    linear warm-up, flat, then cosine down to 5 % of the base lr
            loss <- model.loss(normalize(images), targets)
            skip the step if the loss is not finite (and say so), else backward + AdamW step
            ema <- (1 - m_t) ema + m_t model
        evaluate the EMA model (COCO AP on the val split), write last.pth (and best.pth)

Checkpoints never lose work: they are written atomically and hold everything the next step depends on
(weights, EMA, optimizer, schedule position, grad scaler, every rank's RNG states, data order), so
``--resume last.pth`` continues exactly where the run stopped. ``model`` in every checkpoint holds the EMA
weights, so any of them loads with ``checkpoint.load_checkpoint_model`` for prediction and evaluation.
How exact: bit for bit, with or without workers, mid-epoch or at an epoch's end (``tests/test_trust.py``): a
resumed epoch replays its data pipeline up to the stop point (without training), so the augmentation generator
and the mosaic and mixup caches are where they were. With several processes this holds per rank when the run
resumes on as many processes.

Several processes: ``torchrun --nproc_per_node=N -m rtmdet_lesson train ...`` wraps the model in
DistributedDataParallel (NCCL on GPUs with SyncBatchNorm, gloo on CPUs without), shards the data with a
DistributedSampler, averages the logged numbers over ranks, and lets rank 0 alone evaluate and write files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from rtmdet_lesson import distributed
from rtmdet_lesson.checkpoint import load_checkpoint, save_checkpoint
from rtmdet_lesson.data.coco import CocoInstanceDataset, sprites_split
from rtmdet_lesson.fast import keep_freed_memory, low_precision_dtype, optimize_for_inference, prepare_for_training
from rtmdet_lesson.preprocess import normalize
from rtmdet_lesson.presets import PRESETS, build_model
from rtmdet_lesson.rotated.model import ROTATED_PRESETS
from rtmdet_lesson.runtime import pick_device, seed_everything

log = logging.getLogger("rtmdet_lesson.train")

REFERENCE_LR = 0.004  # AdamW lr of the official recipe ...
REFERENCE_BATCH = 256  # ... for its total batch of 8 GPUs x 32 images
AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
AUGMENTS = ("reference", "flip", "none")
CACHE_MODES = ("off", "on", "auto")
ZERO_POSITIVE_PATIENCE = 10  # first iterations watched for "objects but no positives"
METRIC_NAMES = ("bbox_AP", "segm_AP", "rbox_mAP50", "rbox_AP")  # what the log lines show of an evaluation
MAX_BAD_STEPS_IN_A_ROW = 5  # this many skipped (non-finite) steps in a row stop the run: it has diverged


def scaled_lr(total_batch: int) -> float:
    """The recipe's lr (0.004 at a total batch of 256) moved to another total batch by the square-root rule.

    Adam-type optimisers scale with the square root of the batch size (the SDE view of Adam, Malladi et al.
    2022), not linearly as SGD does: linear scaling would give 1.25e-4 at a batch of 8, far too slow for a
    short CPU run; the square root gives 7.1e-4 (16: 1.0e-3, 32: 1.4e-3). At 256 it is the recipe's 0.004.
    """
    return REFERENCE_LR * math.sqrt(total_batch / REFERENCE_BATCH)


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults are the reference recipe (mmdetection's configs/rtmdet) except where a
    comment says otherwise; ``None`` means "derived", see ``resolve``. Chapter 07 walks through them."""

    preset: str = "course-sprites"
    # data: a folder as `python -m rtmdet_lesson data sprites` writes it, or any COCO-format image folder + JSON
    data: str | None = "data/sprites"
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None  # no val split given: no evaluation, best.pth is not written
    val_annotations: str | None = None
    out: str = "runs/train"
    # the recipe
    image_size: int | None = None  # square canvas; None: the preset's input_size (320 course, 640 official)
    epochs: int = 300
    batch_size: int = 16  # per process; the reference runs 32 on each of 8 GPUs
    lr: float | None = None  # None: scaled_lr(batch_size * world_size)
    weight_decay: float = 0.05  # not on norm parameters or biases
    warmup_iters: int = 1000  # linear warm-up from 1e-5 x lr; at most a tenth of the run
    flat_fraction: float = 0.5  # flat lr for this share of the epochs, then cosine (reference: 150 of 300)
    min_lr_ratio: float = 0.05  # the cosine ends at this share of the base lr
    stage2_epochs: int | None = None  # last epochs without mosaic/mixup; None: 20 of 300, scaled to `epochs`
    augment: str = "reference"  # "reference": the two stages below; "flip": letterbox + flip; "none": letterbox
    mosaic: bool = True
    mixup: bool = True
    ema: bool = True
    ema_momentum: float = 0.0002
    ema_gamma: float = 2000.0
    eval_interval: int = 10  # epochs between evaluations (every epoch in stage 2, and always after the last)
    save_interval: int = 1  # epochs between last.pth writes (always after the last; max_iters and best too)
    seed: int = 0
    workers: int = 2
    cache_images: str = "off"  # decode the training set once into memory: "on", "off" or "auto" (if it fits; ch. 09)
    amp: str = "off"  # "off", "fp16" (CUDA, with a grad scaler) or "bf16" (CUDA, or CPUs with AMX/AVX-512)
    channels_last: bool = False  # NHWC memory from the stem's last conv on (chapter 09: faster convs on CPU/CUDA)
    single_cls_pass: bool = True  # Ins head: one cls-tower pass where the reference runs two (same math; chapter 09)
    device: str | None = None  # None: CUDA, then MPS, then CPU
    export_half: bool = True  # final.pth stores fp16 weights (half the size; loads back as fp32)
    progress: bool = True  # tqdm progress bar on rank 0

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
        for name, low, high in (("lr", 0.0, None), ("weight_decay", 0.0, None), ("min_lr_ratio", 0.0, 1.0),
                                ("flat_fraction", 0.0, 1.0), ("ema_momentum", 0.0, 1.0), ("warmup_iters", 0, None),
                                ("ema_gamma", 0.0, None), ("workers", 0, None)):
            value = getattr(self, name)
            if value is not None and not (value >= low and (high is None or value <= high)):
                bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise ValueError(f"{name.replace('_', '-')} must be {bounds}, got {value}")
        if self.lr is not None and self.lr == 0:
            raise ValueError("lr must be above 0, got 0")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        cache = {True: "on", False: "off"}.get(self.cache_images, self.cache_images)  # bool: older checkpoints
        if cache not in CACHE_MODES:
            raise ValueError(f"cache_images must be one of {CACHE_MODES}, got {self.cache_images!r}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")
        stage2 = self.stage2_epochs if self.stage2_epochs is not None else round(self.epochs * 20 / 300)
        if not 0 <= stage2 <= self.epochs:
            raise ValueError(f"stage2_epochs {stage2} must lie between 0 and epochs ({self.epochs})")
        lr = self.lr if self.lr is not None else scaled_lr(self.batch_size * world_size)
        return TrainConfig(**{**asdict(self), "image_size": image_size, "stage2_epochs": stage2, "lr": lr,
                              "cache_images": cache})


# ---------------------------------------------------------------------------------------------------------------
# data


def is_rotated(config: TrainConfig) -> bool:
    """Whether the config trains RTMDet-R (rotated boxes, DOTA-format data) rather than RTMDet(-Ins) on COCO."""
    return config.preset in ROTATED_PRESETS


def build_datasets(config: TrainConfig) -> tuple[CocoInstanceDataset, CocoInstanceDataset | None]:
    """The raw train and val datasets named by the config (val is None when none is given)."""
    if is_rotated(config):
        return build_rotated_datasets(config)
    if config.train_images or config.train_annotations:
        if not (config.train_images and config.train_annotations):
            raise ValueError("give both --images (the image folder) and --annotations (the COCO JSON file)")
        train_ds = CocoInstanceDataset(config.train_images, config.train_annotations)
        val_ds = None
        if config.val_images or config.val_annotations:
            if not (config.val_images and config.val_annotations):
                raise ValueError("give both --val-images and --val-annotations, or neither")
            val_ds = CocoInstanceDataset(config.val_images, config.val_annotations)
    elif config.data:
        root = Path(config.data)
        if not (root / "train" / "annotations.json").is_file():
            raise FileNotFoundError(
                f"no dataset at {root} (expected {root}/train/annotations.json); generate the sprites with "
                f"`python -m rtmdet_lesson data sprites --out {root}`, or train on your own COCO data with "
                "--images DIR --annotations FILE"
            )
        train_ds = sprites_split(root, "train")
        val_ds = sprites_split(root, "val") if (root / "val" / "annotations.json").is_file() else None
    else:
        raise ValueError("no training data: give --data DIR or --images DIR --annotations FILE")
    if len(train_ds) == 0 or not train_ds.coco.anns:
        raise ValueError(f"the training set {train_ds.annotation_file} has no images or no annotations")
    if val_ds is not None and not val_ds.coco.anns:
        log.warning(f"the validation set {val_ds.annotation_file} has no annotations, so its AP is undefined: no "
                    "evaluation, and no best.pth")
        val_ds = None
    if val_ds is not None and val_ds.class_names != train_ds.class_names:
        raise ValueError(
            f"train and val categories differ ({train_ds.class_names} vs {val_ds.class_names}); "
            "both annotation files need the same 'categories'"
        )
    return train_ds, val_ds


def build_rotated_datasets(config: TrainConfig):
    """The DOTA-format train and val datasets of a rotated preset (chapter 10): ``--data DIR`` with
    ``DIR/{train,val}/{images,annfiles}``, or ``--images DIR --annotations ANNFILES_DIR``."""
    from rtmdet_lesson.rotated.dota import DotaDataset, dota_split

    if config.train_images or config.train_annotations:
        if not (config.train_images and config.train_annotations):
            raise ValueError("give both --images (the image folder) and --annotations (the folder of DOTA .txt files)")
        train_ds = DotaDataset(config.train_images, config.train_annotations)
        val_ds = None
        if config.val_images or config.val_annotations:
            if not (config.val_images and config.val_annotations):
                raise ValueError("give both --val-images and --val-annotations, or neither")
            val_ds = DotaDataset(config.val_images, config.val_annotations, train_ds.class_names)
    elif config.data:
        root = Path(config.data)
        if not (root / "train" / "annfiles").is_dir():
            raise FileNotFoundError(
                f"no DOTA-format dataset at {root} (expected {root}/train/annfiles); {config.preset} trains on rotated "
                f"boxes: generate the rotated sprites with `python -m rtmdet_lesson data sprites --rotated --out "
                f"{root}`, or give --images DIR --annotations ANNFILES_DIR"
            )
        train_ds = dota_split(root, "train")
        val_ds = dota_split(root, "val", train_ds.class_names) if (root / "val" / "annfiles").is_dir() else None
    else:
        raise ValueError("no training data: give --data DIR or --images DIR --annotations ANNFILES_DIR")
    if len(train_ds) == 0 or train_ds.num_objects == 0:
        raise ValueError(f"the training set {train_ds.annotation_file} has no images or no objects")
    if val_ds is not None and val_ds.num_objects == 0:
        log.warning(f"the validation set {val_ds.annotation_file} has no objects, so its mAP is undefined: no "
                    "evaluation, and no best.pth")
        val_ds = None
    return train_ds, val_ds


def build_pipeline(config: TrainConfig):
    """The augmentation pipeline ``pipeline(image, target, rng)`` of a (resolved) config.

    "reference": the recipe's stage 1 (mosaic, mixup if enabled, random resize and crop, HSV, flip) switching
    to stage 2 for the last ``stage2_epochs``, with the settings of the preset's size (the course presets use
    tiny's). "flip" and "none" only letterbox (and flip): for checking that a model can fit a few images.
    """
    from rtmdet_lesson.data import transforms

    size = (config.image_size, config.image_size)
    if is_rotated(config):  # mmrotate's rotated_rtmdet recipe: letterbox and flips; quarter turns (chapter 10)
        from rtmdet_lesson.rotated.transforms import RotatedTrainPipeline

        flip, turn = {"reference": (0.75, 0.5), "flip": (0.75, 0.0), "none": (0.0, 0.0)}[config.augment]
        return RotatedTrainPipeline(size, flip_prob=flip, turn_prob=turn)
    if config.augment == "reference":
        recipe = config.preset.rsplit("-", 1)[-1]
        recipe = recipe if recipe in transforms.REFERENCE_AUGMENT else "tiny"
        return transforms.train_pipeline(size, config.epochs, config.stage2_epochs, recipe, config.mosaic, config.mixup)
    flip = [transforms.RandomFlip(0.5)] if config.augment == "flip" else []
    return transforms.Compose([transforms.LetterboxResize(size), *flip])


# ---------------------------------------------------------------------------------------------------------------
# the output folder: one run per folder

RUN_FILES = ("log.jsonl", "last.pth", "best.pth", "final.pth")


def claim_output_folder(out: Path, resume: str | Path | None, overwrite: bool) -> None:
    """Make sure ``out`` holds no other run's files before this run writes there; never mix two runs.

    Resuming from a checkpoint inside ``out`` continues that run in place. Otherwise a folder that holds a
    run's files is refused, unless ``overwrite`` is set: then those files (and only those) are deleted first.
    Every process checks; under torchrun only rank 0 is passed ``overwrite`` and deletes.
    """
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found or (resume is not None and Path(resume).resolve().parent == out.resolve()):
        return
    if not overwrite:
        hint = f"continue it with --resume {out / 'last.pth'}, " if "last.pth" in found else ""
        raise FileExistsError(f"{out} already holds a training run ({', '.join(found)}); {hint}start a new run "
                              "in another folder with --out DIR, or replace it with --overwrite")
    for name in found:
        (out / name).unlink()


# ---------------------------------------------------------------------------------------------------------------
# state that has to survive a restart, or a step that went wrong


def _rng_state() -> dict:
    """Every random number generator the loop touches, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _NormStatistics:
    """A copy of every BatchNorm running statistic of a model, to put back after a step that is skipped.

    The forward pass updates running means and variances before the loss exists: one batch with a non-finite
    loss would otherwise leave NaN in every BN layer (and, through the EMA, in the exported model).
    """

    def __init__(self, model: nn.Module):
        self.live = [buffer for module in model.modules() if isinstance(module, nn.modules.batchnorm._NormBase)
                     and module.track_running_stats
                     for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)]
        self.saved = [buffer.clone() for buffer in self.live]

    def save(self) -> None:
        if self.live:
            torch._foreach_copy_(self.saved, self.live)

    def restore(self) -> None:
        if self.live:
            torch._foreach_copy_(self.live, self.saved)


def gradients_are_finite(parameters) -> bool:
    """True if no gradient holds an inf or a NaN (one host synchronisation)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())


class TrainingDiverged(RuntimeError):
    """Raised when ``MAX_BAD_STEPS_IN_A_ROW`` steps in a row had a non-finite loss or gradient."""


class _WithLoss(nn.Module):
    """``model.loss`` as a forward pass, so that ``DistributedDataParallel`` sees it (DDP hooks ``forward``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, targets: list[dict]) -> dict:
        return self.model.loss(x, targets)


# ---------------------------------------------------------------------------------------------------------------
# the loop


class _JsonLog:
    """Appends one JSON object per line to ``path`` (rank 0 only): every step's losses, lr, and the metrics."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, **record) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def train(config: TrainConfig, resume: str | Path | None = None, max_iters: int | None = None, on_step=None,
          overwrite: bool = False) -> dict:
    """Train a model as ``config`` says. Chapter 07.

    Returns a dict: ``model`` (the EMA model, or the trained one without EMA), ``train_model``, ``out``,
    ``iterations``, ``stopped`` (True when ``max_iters`` or a signal ended it), ``signal`` (the signal number
    that stopped it, else None), ``metrics`` (the last evaluation),
    ``skipped_steps``, and after a complete run ``final`` (the exported checkpoint), ``seconds`` and
    ``eval_seconds`` (the part of ``seconds`` spent in evaluations; each one's is in its ``eval`` log record).

    Args:
        config: the run's settings (``TrainConfig``).
        resume: a ``last.pth`` (or any checkpoint this function wrote) to continue from, exactly where it stopped.
        max_iters: stop after this many iterations in total (counted from the start of the run, not of this
            call), writing ``last.pth`` first: an interrupted run that ``resume`` continues.
            Ctrl-C (SIGINT, also Jupyter's "interrupt kernel") or SIGTERM does the same after the current step;
            a second Ctrl-C stops at once (the last epoch's last.pth is then what is left).
        on_step: called as ``on_step(record)`` after every optimizer step with the logged record (a dict).
        overwrite: delete an earlier run's files in ``config.out`` first; without it such a folder is refused
            (``claim_output_folder``), so that two runs never mix.

    A step whose loss or gradients are not finite is skipped and leaves the weights, BN statistics, EMA and
    optimizer exactly as they were; ``MAX_BAD_STEPS_IN_A_ROW`` of them in a row write ``last.pth`` (the state
    before them) and raise ``TrainingDiverged``.

    Run it under ``torchrun --nproc_per_node=N`` for DistributedDataParallel; ``batch_size`` is per process.
    Writes to ``config.out``: ``log.jsonl``, ``last.pth`` (every epoch), ``best.pth`` (best segm AP, bbox AP
    for detectors, DOTA mAP50 for RTMDet-R) and ``final.pth`` (the EMA weights only, fp16 if ``export_half``).
    Rotated presets (chapter 10) read DOTA-format data and augment with ``rotated.transforms``; the loop is the same.
    """
    if max_iters is not None and max_iters < 1:
        raise ValueError(f"max-iters must be at least 1, got {max_iters}")
    config.resolve()  # bad settings fail here, before any process group or file exists
    claim_output_folder(Path(config.out), resume, overwrite and distributed.launched_rank() == 0)
    info = distributed.setup(config.device)
    try:
        with _StopRequest() as stop:
            summary = _train(config.resolve(info.world_size), info, resume, max_iters, on_step, stop)
    except BaseException:
        if info.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise
    distributed.cleanup(info)
    return summary


class _StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step (checked by the loop)."""

    def __init__(self):
        self.requested, self.signal, self.previous = False, None, {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signal = True, signum
        log.warning("stop requested: finishing this step and writing last.pth (interrupt again to stop at once)")

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _train(config: TrainConfig, info: distributed.DistInfo, resume, max_iters, on_step, stop) -> dict:
    from rtmdet_lesson.data.cache import MEMORY_SHARE, DecodedCache, too_big
    from rtmdet_lesson.data.collate import AugmentedDataset, collate, worker_init_fn
    from rtmdet_lesson.ema import ExpMomentumEMA
    from rtmdet_lesson.schedule import build_lr_scheduler, param_groups

    device, out = info.device, Path(config.out)
    jlog = _JsonLog(out / "log.jsonl" if info.is_main else None)
    amp_dtype = AMP_DTYPES[config.amp]
    if amp_dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"fp16 autocast needs CUDA (the device is {device.type}); use --amp bf16 or --amp off")
    seed_everything(config.seed + info.rank)  # rank 0 = a single-process run with the same seed
    if device.type == "cpu":
        keep_freed_memory()  # reuse freed activations instead of page-faulting fresh memory every step (chapter 09)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the canvas is fixed: let cuDNN pick each conv's fastest algorithm

    train_raw, val_ds = build_datasets(config)
    class_names = list(train_raw.class_names)
    label_to_category_id = dict(train_raw.label_to_category_id)  # kept in every checkpoint, used by predict
    rotated_cache = config.cache_images != "off" and is_rotated(config)  # the cache holds COCO images and masks
    # every rank holds its own cache, so "auto" leaves each of them its share of the memory
    refusal = not rotated_cache and config.cache_images == "auto" and too_big(train_raw, MEMORY_SHARE / info.world_size)
    if rotated_cache:
        if config.cache_images == "on":
            raise ValueError("--cache-images holds COCO images and masks; it does not take DOTA-format data yet: "
                             "train rotated presets with --cache-images off")
        _say(info, "--cache-images auto: not caching, the cache takes COCO data only; each image is read when used")
    elif refusal:
        _say(info, f"--cache-images auto: not caching, {refusal}; each image is decoded when it is used")
    elif config.cache_images != "off":
        train_raw = DecodedCache(train_raw)
        _say(info, f"decoded {len(train_raw)} training images into memory ({train_raw.nbytes / 2**20:.0f} MiB, "
                   f"{train_raw.seconds:.1f} s)")
    # input_size: the canvas predict() and evaluate_coco() letterbox onto, kept by the checkpoints
    model = build_model(config.preset, num_classes=len(class_names), class_names=class_names,
                        input_size=config.image_size).to(device)
    # one cls-tower pass; channels-last; fp32 depthwise convs under CPU bf16 (chapter 09)
    prepare_for_training(model, config.channels_last, amp_dtype, config.single_cls_pass)
    if info.backend == "nccl":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        _say(info, "SyncBatchNorm: batch statistics are shared across the GPUs")
    elif info.distributed:
        _say(info, f"no SyncBatchNorm on {info.backend} (it needs GPUs): each rank normalises with its own batch "
                   "statistics; rank 0's running statistics are copied to all ranks after every epoch")
    loss_module = _WithLoss(model)
    if info.distributed:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )  # broadcasts rank 0's weights, then averages gradients in backward
    ema = ExpMomentumEMA(model, momentum=config.ema_momentum, gamma=config.ema_gamma) if config.ema else None
    eval_model = ema.module if ema is not None else model

    # data order: DistributedSampler (one shard per rank; shuffled by seed and epoch)
    sampler = DistributedSampler(train_raw, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=config.seed)
    if len(sampler) < config.batch_size:
        raise ValueError(f"{len(train_raw)} training images give {len(sampler)} per process, fewer than the "
                         f"batch size {config.batch_size}; lower --batch-size")
    iters_per_epoch = len(sampler) // config.batch_size  # drop_last: every batch is full
    total_iters = iters_per_epoch * config.epochs
    switch_epoch = config.epochs - config.stage2_epochs
    # rank r augments with seed + r; AugmentedDataset reseeds at (seed, epoch, worker) so epochs are reproducible
    train_ds = AugmentedDataset(train_raw, build_pipeline(config), seed=config.seed + info.rank)
    loader = DataLoader(
        train_ds,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed + info.rank),  # worker seeds; not the global RNG
    )

    # fused: the same AdamW update in one kernel over all parameters (~5x faster step on a CPU than the loop)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                                  fused=device.type in ("cpu", "cuda") or None)
    scheduler = build_lr_scheduler(
        optimizer, flat_until_iter=round(config.flat_fraction * total_iters), total_iters=total_iters,
        warmup_iters=min(config.warmup_iters, total_iters // 10), min_lr_ratio=config.min_lr_ratio,
    )  # stepped every iteration
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    if info.is_main:  # made once the data and the model are known to be usable
        out.mkdir(parents=True, exist_ok=True)
    epoch, epoch_iter, iteration, best, skipped, rng = 0, 0, 0, -1.0, 0, None
    if resume is not None:
        checkpoint = load_checkpoint(resume)  # on the CPU: the RNG states must stay there
        state = checkpoint.get("train_state")
        if state is None:
            raise ValueError(f"{resume} holds no training state (an exported final.pth?); resume from last.pth")
        if (checkpoint["preset"], checkpoint["num_classes"]) != (config.preset, len(class_names)):
            raise ValueError(
                f"{resume} is a {checkpoint['preset']} run with {checkpoint['num_classes']} classes, but this run "
                f"builds {config.preset} with {len(class_names)}; resume with the checkpoint's preset and data, or "
                "start a new run in another folder"
            )
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        changed = {k: (v, getattr(config, k)) for k, v in state["config"].items()
                   if k not in ("out", "progress", "workers", "cache_images", "device") and getattr(config, k) != v}
        if changed:
            _say(info, "resuming with settings that differ from the checkpoint's (was, now): " + ", ".join(
                f"{k} {was!r} -> {now!r}" for k, (was, now) in changed.items()), logging.WARNING)
        epoch, epoch_iter, iteration = state["epoch"], state["epoch_iter"], state["iteration"]
        best, skipped = state["best"], state["skipped_steps"]
        if len(state["rng"]) == info.world_size:
            rng = state["rng"][info.rank]
            rng = rng[0] if isinstance(rng, (list, tuple)) else rng  # older files: (global RNGs, data RNG)
        else:
            _say(info, f"resuming a {len(state['rng'])}-process run on {info.world_size}: the data shards and the "
                       "random augmentations differ from an uninterrupted run", logging.WARNING)
        _say(info, f"resumed from {resume} at epoch {epoch}, iteration {iteration}")
        jlog.write(event="resume", checkpoint=str(resume), epoch=epoch, iteration=iteration)
    else:
        jlog.write(event="start", config=asdict(config), world_size=info.world_size, iters_per_epoch=iters_per_epoch)
    _say(info, f"{config.preset} on {len(train_raw)} images ({len(class_names)} classes): {config.epochs} epochs x "
               f"{iters_per_epoch} iterations, batch {config.batch_size} x {info.world_size} process(es), "
               f"lr {config.lr:.3g}, {config.image_size}x{config.image_size}, device {device}, amp {config.amp}")

    def save(paths: list[Path], metrics: dict) -> None:
        """Write checkpoints of the whole run on rank 0, with every rank's RNG states (all ranks call this)."""
        rngs = distributed.gather_objects(_rng_state(), info)
        if not info.is_main:
            return
        train_state = {
            "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch, "epoch_iter": epoch_iter, "iteration": iteration, "best": best,
            "skipped_steps": skipped, "rng": rngs, "config": asdict(config),
        }
        for path in paths:
            save_checkpoint(path, eval_model, class_names, metrics=metrics, train_state=train_state,
                            label_to_category_id=label_to_category_id)

    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    norm_statistics = _NormStatistics(model)
    metrics: dict = {}
    positives_seen, bad_in_a_row = 0.0, 0
    bar = tqdm(total=total_iters, initial=iteration, disable=not (info.is_main and config.progress),
               desc="train", dynamic_ncols=True)
    start, eval_seconds = time.perf_counter(), 0.0
    while epoch < config.epochs:
        if epoch == switch_epoch and epoch > 0:
            _say(info, f"epoch {epoch}: stage 2, the light pipeline (no mosaic, no mixup) for the last epochs")
        sampler.set_epoch(epoch)  # the epoch's shuffle
        train_ds.set_epoch(epoch)  # the epoch's augmentation seed and pipeline stage; empty mosaic/mixup caches
        batches = iter(loader)
        # Resuming mid-epoch: run the data pipeline over the batches already trained on and drop them, so that the
        # augmentation generator and the mosaic and mixup caches are exactly where the stopped run left them.
        for _ in range(epoch_iter):
            next(batches)
        if rng is not None:  # restored after the replay, which touches only the data's own generators
            _set_rng_state(rng)
            rng = None
        for images, targets in batches:
            lr = optimizer.param_groups[0]["lr"]
            x = normalize(images.to(device, non_blocking=True))  # (B, 3, S, S) BGR float
            targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                       for t in targets]
            norm_statistics.save()
            with autocast:
                losses = loss_module(x, targets)
            loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
            stepped = False
            if distributed.all_true(bool(torch.isfinite(loss)), info):  # every rank skips together
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # a no-op without fp16
                if gradients_are_finite(model.parameters()):  # averaged by DDP: the same answer on every rank
                    scaler.step(optimizer)
                    stepped = True
                scaler.update()  # fp16: lowers the loss scale after an overflow
            if stepped:
                bad_in_a_row = 0
                if ema is not None:
                    ema.update(model)
            else:  # leave everything as it was before this batch
                norm_statistics.restore()
                skipped, bad_in_a_row = skipped + 1, bad_in_a_row + 1
                _say(info, f"iteration {iteration}: the loss or a gradient is not finite ({_fmt(losses)}); step "
                           f"skipped ({skipped} so far)", logging.WARNING)
                jlog.write(event="skipped_step", epoch=epoch, iteration=iteration, **_floats(losses))
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            iteration, epoch_iter = iteration + 1, epoch_iter + 1

            num_gt = float(sum(len(t["labels"]) for t in targets))
            stop_here = stop.requested or (max_iters is not None and iteration >= max_iters)
            record = {**_floats({**losses, "loss": loss}), "num_gt": num_gt, "stop": float(stop_here)}
            record = distributed.mean_over_ranks(record, info)  # averaged over ranks, identical on all of them
            stop_here = record.pop("stop") > 0  # one rank asked to stop: all stop after the same step
            record = {"epoch": epoch, "iteration": iteration, "lr": lr, **record, "skipped_steps": skipped}
            positives_seen += record["num_pos"]
            _check_positives(info, iteration, record, positives_seen)
            jlog.write(**record)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{record['loss']:.3f}", pos=f"{record['num_pos']:.0f}",
                            lr=f"{lr:.2e}", refresh=False)
            if on_step is not None:
                on_step(record)
            # one process: a stop asked for during this step's callback counts now; several: at the next step's
            # all-reduce, so that every rank stops after the same step
            stop_here = stop_here or (not info.distributed and stop.requested)
            if bad_in_a_row >= MAX_BAD_STEPS_IN_A_ROW:
                save([out / "last.pth"], metrics)
                bar.close()
                raise TrainingDiverged(
                    f"{bad_in_a_row} steps in a row had a non-finite loss or gradient at iteration {iteration}: the "
                    f"run has diverged (lr {config.lr:.3g}). The state before them is in {out / 'last.pth'}; resume "
                    "with a lower --lr, or check the data"
                )
            if stop_here:
                save([out / "last.pth"], metrics)
                bar.close()
                _say(info, f"stopped after {iteration} iterations; continue with --resume {out / 'last.pth'}")
                return {"out": out, "iterations": iteration, "stopped": True, "signal": stop.signal,
                        "metrics": metrics, "skipped_steps": skipped, "model": eval_model, "train_model": model}
        epoch, epoch_iter = epoch + 1, 0
        distributed.broadcast_buffers([model] + ([ema.module] if ema is not None else []), info)
        paths = [out / "last.pth"] if epoch % config.save_interval == 0 or epoch == config.epochs else []
        if val_ds is not None and (epoch % config.eval_interval == 0 or epoch > switch_epoch or epoch == config.epochs):
            eval_start = time.perf_counter()
            metrics = _evaluate(eval_model, val_ds, info, config)  # rank 0; the others wait in save's gather
            took = time.perf_counter() - eval_start
            eval_seconds += took
            jlog.write(event="eval", epoch=epoch, iteration=iteration, seconds=took, **metrics)
            score = metrics.get("segm_AP", metrics.get("bbox_AP", metrics.get("rbox_mAP50", -1.0)))
            if score > best:  # only rank 0 has metrics; the others never save anyway
                best = score
                paths.append(out / "best.pth")
        if distributed.any_true(bool(paths), info):  # rank 0 alone may add best.pth: every rank must join save
            save(paths, metrics)
    bar.close()
    elapsed = time.perf_counter() - start
    final = out / "final.pth"
    if info.is_main:
        save_checkpoint(final, eval_model, class_names, half=config.export_half, metrics=metrics,
                        label_to_category_id=label_to_category_id)
        _say(info, f"done: {iteration} iterations in {elapsed:.0f} s; EMA weights in {final}"
                   + "".join(f", {k} {metrics[k]:.3f}" for k in METRIC_NAMES if k in metrics))
    return {"out": out, "iterations": iteration, "stopped": False, "signal": None, "metrics": metrics,
            "skipped_steps": skipped, "final": final, "seconds": elapsed, "eval_seconds": eval_seconds,
            "model": eval_model.eval(), "train_model": model}


def _evaluate(model: nn.Module, val_ds, info: distributed.DistInfo, config: TrainConfig) -> dict:
    """COCO AP of ``model`` on the val set, on rank 0 only (the other ranks wait at the barrier after it), through
    the ``exact`` inference path that ``evaluate`` takes by default: the same answers, faster (chapter 09)."""
    from rtmdet_lesson.evaluate import evaluate_coco

    if not info.is_main:
        return {}
    if is_rotated(config):
        from rtmdet_lesson.rotated.metric import evaluate_rotated

        metrics = evaluate_rotated(model, val_ds, device=info.device, batch_size=config.batch_size, progress=False)
        _say(info, "eval: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_NAMES if k in metrics))
        return metrics
    metrics = evaluate_coco(optimize_for_inference(model, "exact", info.device), val_ds, config="eval",
                            device=info.device, batch_size=config.batch_size, progress=False)
    _say(info, "eval: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_NAMES if k in metrics))
    return metrics


def _check_positives(info, iteration: int, record: dict, positives_seen: float) -> None:
    """No positive priors while there are objects means the targets do not fit the images (mmdetection #11148)."""
    if iteration > ZERO_POSITIVE_PATIENCE or record["num_pos"] > 0 or record["num_gt"] == 0:
        return
    message = (f"iteration {iteration}: {record['num_gt']:.0f} objects but no positive priors. The box and mask "
               "losses cannot learn: check that the boxes are x1y1x2y2 pixels of the network input and the labels "
               "0..C-1 (a category-id mismatch in the annotations is the usual cause)")
    if iteration == ZERO_POSITIVE_PATIENCE and positives_seen == 0:
        raise RuntimeError(message + f"; stopped: no positives in the first {iteration} iterations")
    _say(info, message, logging.WARNING)


def _floats(losses: dict) -> dict:
    """The numbers of a losses dict as Python floats, read from the device in one synchronisation."""
    device = next((v.device for v in losses.values() if torch.is_tensor(v)), None)
    values = [torch.as_tensor(v, dtype=torch.float64, device=device).detach().reshape(()) for v in losses.values()]
    return dict(zip(losses, torch.stack(values).tolist(), strict=True))


def _fmt(losses: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in _floats(losses).items())


def _say(info: distributed.DistInfo, message: str, level: int = logging.INFO) -> None:
    """Log on rank 0, above the progress bar."""
    if info.is_main:
        log.log(level, message)


# ---------------------------------------------------------------------------------------------------------------
# command line: python -m rtmdet_lesson train [PRESET] ...

_HELP = {
    "image_size": "square training and evaluation canvas (default: 320 for course presets, 640 otherwise)",
    "epochs": "number of epochs (default: 300, the reference's)",
    "batch_size": "images per process and step (default: 16)",
    "lr": "AdamW learning rate (default: 0.004 * sqrt(total batch / 256), see scaled_lr)",
    "weight_decay": "AdamW weight decay, not applied to norm parameters and biases (default: 0.05)",
    "warmup_iters": "linear warm-up iterations, capped at a tenth of the run (default: 1000)",
    "flat_fraction": "share of the run at the flat lr before the cosine (default: 0.5)",
    "min_lr_ratio": "the cosine ends at this share of the lr (default: 0.05)",
    "stage2_epochs": "last epochs without mosaic and mixup (default: 20 of 300, scaled to --epochs)",
    "augment": "reference (the recipe's two stages), flip (letterbox + flip) or none (letterbox only); rotated "
               "presets: reference = letterbox, flips and quarter turns, flip = without the turns",
    "mosaic": "cached mosaic in stage 1 (default: on)",
    "mixup": "cached mixup in stage 1 (default: on)",
    "ema": "keep an EMA of the weights and evaluate/export it (default: on)",
    "ema_momentum": "EMA momentum floor (default: 0.0002)",
    "ema_gamma": "EMA warm-up constant in iterations (default: 2000)",
    "eval_interval": "epochs between COCO evaluations on the val split (default: 10; every epoch in stage 2)",
    "save_interval": "epochs between writes of last.pth (default: 1)",
    "seed": "random seed (default: 0)",
    "workers": "DataLoader worker processes per training process; on a CPU with few cores 0 can be faster, as "
               "workers compete with the training threads (chapter 09) (default: 2)",
    "cache_images": "decode the training images and masks once and keep them in memory, packed (the sprites: "
                    "232 MiB): on (refused if it would take over half the available memory), auto (only if it "
                    "fits; what --fast sets) or off (default: off; --cache-images alone: on)",
    "amp": "mixed precision: off, fp16 (CUDA) or bf16 (CUDA, or a CPU with AMX) (default: off)",
    "channels_last": "channels-last (NHWC) memory from the stem's last conv on (default: off)",
    "single_cls_pass": "Ins head: run the cls tower once and reuse it for boxes where the reference runs it twice; "
                       "same outputs, gradients and BN statistics, less time (default: on)",
    "device": "cpu, cuda or mps (default: the best available)",
    "export_half": "store final.pth in fp16 (default: on)",
    "progress": "show a progress bar (default: on)",
}


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``train`` sub-command's arguments: the data, the output, and every ``TrainConfig`` setting."""
    parser.add_argument("preset", nargs="?", default=None, choices=[*PRESETS, *ROTATED_PRESETS], metavar="PRESET",
                        help="model preset (default: course-sprites, or the resumed run's); e.g. rtmdet-ins-tiny, or "
                             "course-sprites-rotated / rtmdet-r-tiny for rotated boxes on DOTA-format data")
    data = parser.add_argument_group("data (default: --data data/sprites)")
    data.add_argument("--data", default=None, help="a folder with train/ and val/ as `data sprites` writes it")
    data.add_argument("--images", default=None, help="image folder of any COCO-format training set")
    data.add_argument("--annotations", default=None, help="its COCO instances JSON (with --images); rotated presets: "
                      "the folder of DOTA .txt files")
    data.add_argument("--val-images", default=None, help="validation image folder (optional, with --images)")
    data.add_argument("--val-annotations", default=None, help="validation COCO JSON (with --val-images)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/PRESET)")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue a run from its last.pth, with its settings (any given here override them)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an earlier run's files in --out first (without it such a folder is refused)")
    parser.add_argument("--max-iters", type=int, default=None,
                        help="stop after this many iterations in total (writes last.pth to resume from)")
    parser.add_argument("--bf16", action="store_true", help="shorthand for --amp bf16")
    parser.add_argument("--fast", action="store_true",
                        help="the fast settings (chapter 09): --channels-last, the fast mixed precision of the "
                             "device (bf16 on AMX/AVX-512 CPUs and on CUDA with bf16, fp16 on older CUDA) and "
                             "--cache-images auto; settings given as well win over these")
    recipe = parser.add_argument_group("recipe (defaults: the reference's, configs/rtmdet in mmdetection)")
    types = {"image_size": int, "lr": float, "stage2_epochs": int, "device": str}
    for f in fields(TrainConfig):
        if f.name not in _HELP:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            recipe.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_HELP[f.name])
        else:
            kind = types.get(f.name, type(f.default))
            choices = {"amp": list(AMP_DTYPES), "augment": list(AUGMENTS), "cache_images": CACHE_MODES}.get(f.name)
            const = {"nargs": "?", "const": "on"} if f.name == "cache_images" else {}  # the bare flag means on
            recipe.add_argument(flag, type=kind, default=None, choices=choices, help=_HELP[f.name], **const)
    return parser


def fast_training_settings(device: torch.device) -> dict:
    """What ``train --fast`` turns on for ``device`` (chapter 09): channels-last, the device's fast mixed
    precision where it has one (bf16 on AMX/AVX-512 CPUs and on CUDA with bf16, fp16 on older CUDA), and the
    decoded training set in memory if it fits (``cache_images="auto"``)."""
    low = low_precision_dtype(device)
    settings = {"channels_last": True, "cache_images": "auto"}
    if low is not None:
        settings["amp"] = {torch.bfloat16: "bf16", torch.float16: "fp16"}[low]
    return settings


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """A ``TrainConfig`` from parsed ``train`` arguments: ``base`` (default: the defaults), overridden by what
    was given on the command line."""
    if args.data and (args.images or args.annotations):
        raise ValueError("give either --data DIR or --images DIR --annotations FILE, not both")
    settings = asdict(base) if base is not None else {}
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if f.name in _HELP and getattr(args, f.name, None) is not None}
    if getattr(args, "fast", False):  # under what was given: --fast --cache-images off keeps the cache off
        settings.update(fast_training_settings(pick_device(given.get("device", settings.get("device")))))
    settings.update(given)
    if args.bf16:
        settings["amp"] = "bf16"
    if args.images or args.annotations:
        settings.update(data=None, train_images=args.images, train_annotations=args.annotations,
                        val_images=args.val_images, val_annotations=args.val_annotations)
    elif args.data:
        settings.update(data=args.data, train_images=None, train_annotations=None, val_images=None,
                        val_annotations=None)
    settings["preset"] = args.preset or settings.get("preset", "course-sprites")
    settings["out"] = args.out or settings.get("out") or f"runs/{settings['preset']}"
    return TrainConfig(**settings)


def checkpoint_config(path: str | Path) -> TrainConfig:
    """The settings a training checkpoint (``last.pth``, ``best.pth``) was written with."""
    state = load_checkpoint(path).get("train_state")
    if state is None:
        raise ValueError(f"{path} holds no training state (an exported final.pth?); resume from last.pth")
    return TrainConfig(**state["config"])


def main(args: argparse.Namespace) -> int:
    """CLI entry: ``python -m rtmdet_lesson train [PRESET] [--data DIR | --images DIR --annotations FILE] ...``."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    config = config_from_args(args, checkpoint_config(args.resume) if args.resume else None)
    if args.resume and not args.out:  # continue in the checkpoint's folder, wherever the run was moved to
        config = TrainConfig(**{**asdict(config), "out": str(Path(args.resume).parent)})
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm(loggers=[log]):
            summary = train(config, resume=args.resume, max_iters=args.max_iters, overwrite=args.overwrite)
    finally:
        log.removeHandler(handler)
    return 128 + summary["signal"] if summary["signal"] else 0  # the shell's convention for a signalled stop


if __name__ == "__main__":  # `torchrun ... -m rtmdet_lesson.train ...` works without the package CLI too
    import sys

    sys.exit(main(add_train_arguments(argparse.ArgumentParser(prog="rtmdet_lesson.train")).parse_args()))
