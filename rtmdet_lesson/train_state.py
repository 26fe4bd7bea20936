"""What a training run must keep to survive a restart or a bad step (chapter 07).

- The output folder holds one run: ``claim_output_folder`` refuses to mix two.
- A checkpoint of the run (``save_run``) holds everything the next step depends on: weights, EMA, optimizer,
  schedule position, grad scaler, the position in the data (epoch and batch), and every rank's RNG states.
  Its ``model`` entry holds the weights that are evaluated (the EMA's), so any checkpoint of the run loads with
  ``checkpoint.load_checkpoint_model`` for prediction and evaluation.
- ``restore_run`` puts all of it back, and ``replay`` runs a resumed epoch's data pipeline over the batches
  already trained on (without training), so that the augmentation generator and the mosaic and mixup caches
  are where they were: a resumed run is bit for bit the run that was not stopped (``tests/test_trust.py``),
  with or without DataLoader workers, and per rank when it resumes on as many processes.
- ``StopRequest`` turns Ctrl-C or SIGTERM into a stop after the current step, with a checkpoint to resume from.
- ``NormStatistics`` puts the BatchNorm running statistics back after a skipped step.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtmdet_lesson import distributed
from rtmdet_lesson.checkpoint import load_checkpoint, save_checkpoint
from rtmdet_lesson.train_config import TrainConfig

log = logging.getLogger("rtmdet_lesson.train")

RUN_FILES = ("log.jsonl", "last.pth", "best.pth", "final.pth")
MACHINE_SETTINGS = ("out", "progress", "workers", "device")  # may change on resume without a warning


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


def rng_state() -> dict:
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


def set_rng_state(state: dict) -> None:
    """Put back what ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class NormStatistics:
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


@dataclass
class Progress:
    """Where a run stands: the epoch, the batch within it, iterations in all, the best score, skipped steps."""

    epoch: int = 0
    epoch_iter: int = 0
    iteration: int = 0
    best: float = -1.0
    skipped_steps: int = 0


@dataclass
class RunParts:
    """The objects a run's checkpoint saves and restores, and what goes with every file it writes."""

    model: nn.Module
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    class_names: list[str]
    label_to_category_id: dict[int, int]

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and exported: the EMA's, or the trained ones without EMA."""
        return self.ema.module if self.ema is not None else self.model


def save_run(paths: list[Path], parts: RunParts, progress: Progress, config: TrainConfig, metrics: dict,
             info: distributed.DistInfo) -> None:
    """Write checkpoints of the whole run on rank 0, with every rank's RNG states (all ranks call this)."""
    rngs = distributed.gather_objects(rng_state(), info)
    if not info.is_main:
        return
    train_state = {
        "model": parts.model.state_dict(), "ema": parts.ema.state_dict() if parts.ema is not None else None,
        "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(), **asdict(progress), "rng": rngs, "config": asdict(config),
    }
    for path in paths:
        save_checkpoint(path, parts.eval_model, parts.class_names, metrics=metrics, train_state=train_state,
                        label_to_category_id=parts.label_to_category_id)


def saved_config(path: str | Path) -> TrainConfig:
    """The settings a run's checkpoint (``last.pth``, ``best.pth``) was written with."""
    return TrainConfig.from_saved(_train_state(load_checkpoint(path), path)["config"])


def _train_state(checkpoint: dict, path) -> dict:
    state = checkpoint.get("train_state")
    if state is None:
        raise ValueError(f"{path} holds no training state (an exported final.pth?); resume from last.pth")
    return state


def restore_run(path: str | Path, parts: RunParts, config: TrainConfig, info: distributed.DistInfo):
    """Load a run's checkpoint into ``parts``; return its ``Progress`` and this rank's RNG states (None when the
    run had another number of processes: it then goes on with fresh ones, and says so)."""
    checkpoint = load_checkpoint(path)  # on the CPU: the RNG states must stay there
    state = _train_state(checkpoint, path)
    if (checkpoint["preset"], checkpoint["num_classes"]) != (config.preset, len(parts.class_names)):
        raise ValueError(
            f"{path} is a {checkpoint['preset']} run with {checkpoint['num_classes']} classes, but this run builds "
            f"{config.preset} with {len(parts.class_names)}; resume with the checkpoint's preset and data, or start "
            "a new run in another folder"
        )
    parts.model.load_state_dict(state["model"])
    if parts.ema is not None:
        parts.ema.load_state_dict(state["ema"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    was = TrainConfig.from_saved(state["config"])
    changed = [f"{f.name} {getattr(was, f.name)!r} -> {getattr(config, f.name)!r}" for f in fields(TrainConfig)
               if f.name not in MACHINE_SETTINGS and f.name in state["config"]
               and getattr(was, f.name) != getattr(config, f.name)]
    if changed and info.is_main:
        log.warning("resuming with settings that differ from the checkpoint's (was -> now): " + ", ".join(changed))
    progress = Progress(**{f.name: state[f.name] for f in fields(Progress)})
    rng = None
    if len(state["rng"]) == info.world_size:
        rng = state["rng"][info.rank]
        rng = rng[0] if isinstance(rng, (list, tuple)) else rng  # older files: (global RNGs, data RNG)
    elif info.is_main:
        log.warning(f"resuming a {len(state['rng'])}-process run on {info.world_size}: the data shards and the "
                    "random augmentations differ from an uninterrupted run")
    return progress, rng


def replay(batches, count: int, rng: dict | None) -> None:
    """Resuming mid-epoch: draw and drop the ``count`` batches the stopped run had trained on, so that the data
    pipeline's generators and caches are where they were, then put back the saved RNG states (the replay
    touches only the data's own generators)."""
    for _ in range(count):
        next(batches)
    if rng is not None:
        set_rng_state(rng)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step (checked by the loop)."""

    def __init__(self):
        self.requested, self.signal, self.previous = False, None, {}

    def __enter__(self) -> StopRequest:
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
