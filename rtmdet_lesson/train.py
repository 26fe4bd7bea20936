"""The training loop: data, AdamW, warm-up + flat + cosine schedule, EMA, checkpoints, torchrun (chapter 07).

``train(config)`` runs the reference recipe (mmdetection's configs/rtmdet/rtmdet_l_8xb32-300e_coco.py) on one
CPU, one GPU or many processes under ``torchrun``:

    for each epoch:                      stage 1 (mosaic, mixup) ... stage 2 (light pipeline) for the last epochs
        for each batch:                  images (B, 3, S, S) uint8 RGB + one target dict per image
            loss <- model.loss(normalize(images), targets)
            skip the step if the loss or a gradient is not finite (and say so), else backward + AdamW step
            ema <- (1 - m_t) ema + m_t model
            lr <- schedule(iteration)    linear warm-up, flat, then cosine down to 5 % of the base lr
        evaluate the EMA model (COCO AP on the val split), write last.pth (and best.pth)

The pieces live next door: the settings in ``train_config``, the datasets, pipeline and loader in
``train_data``, what a checkpoint of the run holds and how a resume puts it back in ``train_state``, the
metrics in ``evaluate``. Several processes (``torchrun --nproc_per_node=N -m rtmdet_lesson train ...``): the
model is wrapped in DistributedDataParallel (NCCL on GPUs with SyncBatchNorm, gloo on CPUs without), the data
is sharded by a DistributedSampler, the logged numbers are averaged over ranks, and rank 0 alone evaluates
and writes files.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

import torch
from torch import nn
from tqdm.auto import tqdm

from rtmdet_lesson import distributed
from rtmdet_lesson.checkpoint import save_checkpoint
from rtmdet_lesson.evaluate import evaluate_model
from rtmdet_lesson.fast import keep_freed_memory, low_precision_dtype, optimize_for_inference, prepare_for_training
from rtmdet_lesson.preprocess import normalize
from rtmdet_lesson.presets import build_model
from rtmdet_lesson.runtime import seed_everything
from rtmdet_lesson.train_config import AMP_DTYPES, TrainConfig, scaled_lr
from rtmdet_lesson.train_data import build_datasets, build_loader, build_pipeline
from rtmdet_lesson.train_log import JsonLog, check_positives, floats, fmt, say
from rtmdet_lesson.train_state import (
    NormStatistics,
    Progress,
    RunParts,
    StopRequest,
    claim_output_folder,
    replay,
    restore_run,
    save_run,
)

__all__ = ["AMP_DTYPES", "TrainConfig", "TrainResult", "TrainingDiverged", "build_pipeline", "fast_training_settings",
           "scaled_lr", "train", "train_one_epoch"]

log = logging.getLogger("rtmdet_lesson.train")

METRIC_NAMES = ("bbox_AP", "segm_AP", "rbox_mAP50", "rbox_AP")  # what the log lines show of an evaluation
MAX_BAD_STEPS_IN_A_ROW = 5  # this many skipped (non-finite) steps in a row stop the run: it has diverged


def fast_training_settings(device: torch.device) -> dict:
    """What ``train --fast`` sets for ``device`` (chapter 09): channels-last, and the device's fast mixed precision
    where it has one (bf16 on AMX/AVX-512 CPUs and on CUDA with bf16, fp16 on older CUDA)."""
    low = low_precision_dtype(device)
    return {"channels_last": True, **({"amp": {torch.bfloat16: "bf16", torch.float16: "fp16"}[low]} if low else {})}


class TrainingDiverged(RuntimeError):
    """Raised when ``MAX_BAD_STEPS_IN_A_ROW`` steps in a row had a non-finite loss or gradient."""


class TrainResult(TypedDict):
    """What ``train`` returns, complete or stopped."""

    model: nn.Module  # the EMA model (the trained one without EMA), in eval mode: what is evaluated and exported
    train_model: nn.Module  # the trained weights
    out: Path  # the run's folder
    iterations: int  # optimizer steps taken in all (skipped ones included), counted from the run's start
    stopped: bool  # True when max_iters or a signal ended the run before its last epoch
    signal: int | None  # the signal that stopped it
    metrics: dict  # the last evaluation ({} before the first)
    skipped_steps: int  # steps skipped for a non-finite loss or gradient
    final: Path | None  # final.pth, the exported model; None for a stopped run
    seconds: float  # wall time of this call
    eval_seconds: float  # the part of ``seconds`` spent evaluating


def train(config: TrainConfig, resume: str | Path | None = None, max_iters: int | None = None, on_step=None,
          overwrite: bool = False) -> TrainResult:
    """Train a model as ``config`` says. Chapter 07.

    Args:
        config: the run's settings (``TrainConfig``; ``TrainConfig.for_preset(name)`` gives a preset's recipe).
        resume: a ``last.pth`` (or any checkpoint this function wrote) to continue from, exactly where it stopped.
        max_iters: stop after this many iterations in total (counted from the start of the run, not of this
            call), writing ``last.pth`` first: an interrupted run that ``resume`` continues. Ctrl-C (SIGINT, also
            Jupyter's "interrupt kernel") or SIGTERM does the same after the current step; a second Ctrl-C stops
            at once (the last epoch's last.pth is then what is left).
        on_step: called as ``on_step(record)`` after every optimizer step with the logged record (a dict).
        overwrite: delete an earlier run's files in ``config.out`` first; without it such a folder is refused
            (``train_state.claim_output_folder``), so that two runs never mix.

    A step whose loss or gradients are not finite is skipped and leaves the weights, BN statistics, EMA and
    optimizer exactly as they were; ``MAX_BAD_STEPS_IN_A_ROW`` of them in a row write ``last.pth`` (the state
    before them) and raise ``TrainingDiverged``.

    Writes to ``config.out``: ``log.jsonl`` (one JSON record per step and event), ``last.pth`` (every
    ``save_interval`` epochs), ``best.pth`` (best segm AP, bbox AP for detectors, DOTA mAP50 for RTMDet-R) and
    ``final.pth`` (the EMA weights only, fp16 if ``export_half``). Under ``torchrun`` ``batch_size`` is per process.
    """
    if max_iters is not None and max_iters < 1:
        raise ValueError(f"max-iters must be at least 1, got {max_iters}")
    config.resolve()  # bad settings fail here, before any process group or file exists
    claim_output_folder(Path(config.out), resume, overwrite and distributed.launched_rank() == 0)
    info = distributed.setup(config.device)
    try:
        with StopRequest() as stop:
            run = _set_up(config.resolve(info.world_size), info, resume, max_iters, on_step, stop)
            result = _fit(run)
    except BaseException:
        if info.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise
    distributed.cleanup(info)
    return result


@dataclass
class _Run:
    """Everything one run's loop reads and updates."""

    config: TrainConfig
    info: distributed.DistInfo
    parts: RunParts
    loss_module: nn.Module  # model.loss as a forward pass, wrapped in DDP under torchrun
    loader: torch.utils.data.DataLoader
    val_ds: object
    progress: Progress
    rng: dict | None  # the RNG states to restore after a resumed epoch's replay
    log: JsonLog
    bar: tqdm
    stop: StopRequest
    max_iters: int | None
    on_step: object
    autocast: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    norm_statistics: NormStatistics | None = None
    metrics: dict = field(default_factory=dict)
    bad_in_a_row: int = 0
    positives_seen: float = 0.0
    eval_seconds: float = 0.0

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def switch_epoch(self) -> int:
        """The first epoch of stage 2."""
        return self.config.epochs - self.config.stage2_epochs


def _fit(run: _Run) -> TrainResult:
    """The epochs: train, then evaluate and save; export ``final.pth`` after the last."""
    start, p = time.perf_counter(), run.progress
    while p.epoch < run.config.epochs:
        if train_one_epoch(run):
            _save(run, [run.out / "last.pth"])
            say(run.info, f"stopped after {p.iteration} iterations; continue with --resume {run.out / 'last.pth'}")
            return _result(run, start, final=None)
        _end_epoch(run)
    run.bar.close()
    final = run.out / "final.pth"
    if run.info.is_main:
        save_checkpoint(final, run.parts.eval_model, run.parts.class_names, half=run.config.export_half,
                        metrics=run.metrics, label_to_category_id=run.parts.label_to_category_id)
        say(run.info, f"done: {p.iteration} iterations in {time.perf_counter() - start:.0f} s; EMA weights in "
                       f"{final}" + "".join(f", {k} {run.metrics[k]:.3f}" for k in METRIC_NAMES if k in run.metrics))
    return _result(run, start, final=final)


def train_one_epoch(run: _Run) -> bool:
    """One pass over this rank's shard of the data; True if the run must stop now (``max_iters`` or a signal).

    A resumed epoch first replays the batches the stopped run had trained on (``train_state.replay``).
    """
    config, info, p = run.config, run.info, run.progress
    if p.epoch == run.switch_epoch and p.epoch > 0:
        say(info, f"epoch {p.epoch}: stage 2, the light pipeline (no mosaic, no mixup) for the last epochs")
    run.loader.sampler.set_epoch(p.epoch)  # the epoch's shuffle
    run.loader.dataset.set_epoch(p.epoch)  # the epoch's augmentation seed and stage; empty mosaic/mixup caches
    batches = iter(run.loader)
    replay(batches, p.epoch_iter, run.rng)
    run.rng = None
    for images, targets in batches:
        lr = run.parts.optimizer.param_groups[0]["lr"]
        x = normalize(images.to(info.device, non_blocking=True))  # (B, 3, S, S) BGR float
        targets = [{k: v.to(info.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        losses, loss = _step(run, x, targets)
        p.iteration, p.epoch_iter = p.iteration + 1, p.epoch_iter + 1
        stop = _log_step(run, losses, loss, targets, lr)
        if run.bad_in_a_row >= MAX_BAD_STEPS_IN_A_ROW:
            _save(run, [run.out / "last.pth"])
            run.bar.close()
            raise TrainingDiverged(
                f"{run.bad_in_a_row} steps in a row had a non-finite loss or gradient at iteration {p.iteration}: "
                f"the run has diverged (lr {config.lr:.3g}). The state before them is in {run.out / 'last.pth'}; "
                "resume with a lower --lr, or check the data"
            )
        if stop:
            return True
    p.epoch, p.epoch_iter = p.epoch + 1, 0
    return False


def _step(run: _Run, x: torch.Tensor, targets: list[dict]) -> tuple[dict, torch.Tensor]:
    """One optimizer step on a batch, or none if the loss or a gradient is not finite: then the weights, BN
    statistics, EMA and optimizer stay as they were. The schedule moves on either way."""
    parts, p = run.parts, run.progress
    run.norm_statistics.save()
    with run.autocast:
        losses = run.loss_module(x, targets)
    loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
    stepped = False
    if distributed.all_true(bool(torch.isfinite(loss)), run.info):  # every rank skips together
        parts.scaler.scale(loss).backward()
        parts.scaler.unscale_(parts.optimizer)  # a no-op without fp16
        if gradients_are_finite(parts.model.parameters()):  # averaged by DDP: the same answer on every rank
            parts.scaler.step(parts.optimizer)
            stepped = True
        parts.scaler.update()  # fp16: lowers the loss scale after an overflow
    if stepped:
        run.bad_in_a_row = 0
        if parts.ema is not None:
            parts.ema.update(parts.model)
    else:
        run.norm_statistics.restore()
        p.skipped_steps, run.bad_in_a_row = p.skipped_steps + 1, run.bad_in_a_row + 1
        say(run.info, f"iteration {p.iteration}: the loss or a gradient is not finite ({fmt(losses)}); step "
                       f"skipped ({p.skipped_steps} so far)", logging.WARNING)
        run.log.write(event="skipped_step", epoch=p.epoch, iteration=p.iteration, **floats(losses))
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()  # per iteration
    return losses, loss


def gradients_are_finite(parameters) -> bool:
    """True if no gradient holds an inf or a NaN (one host synchronisation)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())


def _log_step(run: _Run, losses: dict, loss: torch.Tensor, targets: list[dict], lr: float) -> bool:
    """Average the step's numbers over ranks, log them, call ``on_step``; return whether to stop now.

    One rank asking to stop (``max_iters``, a signal) stops every rank after the same step.
    """
    info, p = run.info, run.progress
    stop = run.stop.requested or (run.max_iters is not None and p.iteration >= run.max_iters)
    num_gt = float(sum(len(t["labels"]) for t in targets))
    record = {**floats({**losses, "loss": loss}), "num_gt": num_gt, "stop": float(stop)}
    record = distributed.mean_over_ranks(record, info)  # identical on all ranks
    stop = record.pop("stop") > 0
    record = {"epoch": p.epoch, "iteration": p.iteration, "lr": lr, **record, "skipped_steps": p.skipped_steps}
    run.positives_seen += record["num_pos"]
    check_positives(info, p.iteration, record, run.positives_seen)
    run.log.write(**record)
    run.bar.update(1)
    run.bar.set_postfix(epoch=p.epoch, loss=f"{record['loss']:.3f}", pos=f"{record['num_pos']:.0f}", lr=f"{lr:.2e}",
                        refresh=False)
    if run.on_step is not None:
        run.on_step(record)
    # one process: a stop asked for during the callback counts now; several: at the next step's all-reduce
    return stop or (not info.distributed and run.stop.requested)


def _end_epoch(run: _Run) -> None:
    """After an epoch: equal BN buffers on all ranks, evaluate when it is time, write last.pth (and best.pth)."""
    config, info, p = run.config, run.info, run.progress
    distributed.broadcast_buffers([run.parts.model] + ([run.parts.ema.module] if run.parts.ema else []), info)
    paths = [run.out / "last.pth"] if p.epoch % config.save_interval == 0 or p.epoch == config.epochs else []
    due = p.epoch % config.eval_interval == 0 or p.epoch > run.switch_epoch or p.epoch == config.epochs
    if run.val_ds is not None and due:
        start = time.perf_counter()
        run.metrics = _evaluate(run.parts.eval_model, run.val_ds, info, config)  # rank 0; the others wait in _save
        took = time.perf_counter() - start
        run.eval_seconds += took
        run.log.write(event="eval", epoch=p.epoch, iteration=p.iteration, seconds=took, **run.metrics)
        score = run.metrics.get("segm_AP", run.metrics.get("bbox_AP", run.metrics.get("rbox_mAP50", -1.0)))
        if score > p.best:  # only rank 0 has metrics; the others never save anyway
            p.best = score
            paths.append(run.out / "best.pth")
    if distributed.any_true(bool(paths), info):  # rank 0 alone may add best.pth: every rank must join the save
        _save(run, paths)


def _save(run: _Run, paths: list[Path]) -> None:
    save_run(paths, run.parts, run.progress, run.config, run.metrics, run.info)


def _result(run: _Run, start: float, final: Path | None) -> TrainResult:
    run.bar.close()
    return TrainResult(model=run.parts.eval_model.eval(), train_model=run.parts.model, out=run.out,
                       iterations=run.progress.iteration, stopped=final is None, signal=run.stop.signal,
                       metrics=run.metrics, skipped_steps=run.progress.skipped_steps, final=final,
                       seconds=time.perf_counter() - start, eval_seconds=run.eval_seconds)


# ---------------------------------------------------------------------------------------------------------------
# set-up


def _set_up(config: TrainConfig, info: distributed.DistInfo, resume, max_iters, on_step, stop) -> _Run:
    """Data, model, optimiser, schedule and EMA of a (resolved) config, and the state of a resumed run."""
    device, out = info.device, Path(config.out)
    amp_dtype = AMP_DTYPES[config.amp]
    if amp_dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"fp16 autocast needs CUDA (the device is {device.type}); use --amp bf16 or --amp off")
    seed_everything(config.seed + info.rank)  # rank 0 = a single-process run with the same seed
    if device.type == "cpu":
        keep_freed_memory()  # reuse freed activations instead of page-faulting fresh memory (chapter 09)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the canvas is fixed: let cuDNN pick each conv's fastest algorithm
    train_raw, val_ds = build_datasets(config)
    parts, loss_module = _build_model_and_optimiser(config, info, train_raw, amp_dtype)
    loader = build_loader(train_raw, config, info.rank, info.world_size, device)
    iters_per_epoch = len(loader)
    parts.scheduler = _schedule(parts.optimizer, config, iters_per_epoch * config.epochs)
    if info.is_main:  # made once the data and the model are known to be usable
        out.mkdir(parents=True, exist_ok=True)
    jlog = JsonLog(out / "log.jsonl" if info.is_main else None)
    progress, rng = Progress(), None
    if resume is not None:
        progress, rng = restore_run(resume, parts, config, info)
        say(info, f"resumed from {resume} at epoch {progress.epoch}, iteration {progress.iteration}")
        jlog.write(event="resume", checkpoint=str(resume), epoch=progress.epoch, iteration=progress.iteration)
    else:
        jlog.write(event="start", config=asdict(config), world_size=info.world_size, iters_per_epoch=iters_per_epoch)
    say(info, f"{config.preset} on {len(train_raw)} images ({len(parts.class_names)} classes): {config.epochs} "
               f"epochs x {iters_per_epoch} iterations, batch {config.batch_size} x {info.world_size} process(es), "
               f"lr {config.lr:.3g}, {config.image_size}x{config.image_size}, device {device}, amp {config.amp}")
    bar = tqdm(total=iters_per_epoch * config.epochs, initial=progress.iteration, desc="train", dynamic_ncols=True,
               disable=not (info.is_main and config.progress))
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    return _Run(config, info, parts, loss_module, loader, val_ds, progress, rng, jlog, bar, stop, max_iters, on_step,
                autocast, NormStatistics(parts.model))


def _build_model_and_optimiser(config: TrainConfig, info: distributed.DistInfo, train_raw, amp_dtype):
    """The model for the dataset's classes on the device (with SyncBatchNorm and DDP under torchrun), its EMA,
    AdamW (weight decay on conv and linear weights only) and the grad scaler; the schedule comes later."""
    from rtmdet_lesson.ema import ExpMomentumEMA
    from rtmdet_lesson.schedule import param_groups

    class_names = list(train_raw.class_names)
    # input_size: the canvas predict() and evaluate_coco() letterbox onto, kept by the checkpoints
    model = build_model(config.preset, num_classes=len(class_names), class_names=class_names,
                        input_size=config.image_size).to(info.device)
    prepare_for_training(model, config.channels_last, amp_dtype, config.single_cls_pass)  # chapter 09
    if info.backend == "nccl":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        say(info, "SyncBatchNorm: batch statistics are shared across the GPUs")
    elif info.distributed:
        say(info, f"no SyncBatchNorm on {info.backend} (it needs GPUs): each rank normalises with its own batch "
                   "statistics; rank 0's running statistics are copied to all ranks after every epoch")
    loss_module = _WithLoss(model)
    if info.distributed:  # broadcasts rank 0's weights, then averages gradients in backward
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    ema = ExpMomentumEMA(model, momentum=config.ema_momentum, gamma=config.ema_gamma) if config.ema else None
    # fused: the same AdamW update in one kernel over all parameters
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                                  fused=info.device.type in ("cpu", "cuda") or None)
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)
    parts = RunParts(model, ema, optimizer, None, scaler, class_names, dict(train_raw.label_to_category_id))
    return parts, loss_module


def _schedule(optimizer, config: TrainConfig, total_iters: int):
    """Warm-up (at most a tenth of the run), flat for ``flat_fraction`` of it, then cosine; stepped per iteration."""
    from rtmdet_lesson.schedule import build_lr_scheduler

    return build_lr_scheduler(optimizer, flat_until_iter=round(config.flat_fraction * total_iters),
                              total_iters=total_iters, warmup_iters=min(config.warmup_iters, total_iters // 10),
                              min_lr_ratio=config.min_lr_ratio)


class _WithLoss(nn.Module):
    """``model.loss`` as a forward pass, so that ``DistributedDataParallel`` sees it (DDP hooks ``forward``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, targets: list[dict]) -> dict:
        return self.model.loss(x, targets)


# ---------------------------------------------------------------------------------------------------------------
# evaluation and logging


def _evaluate(model: nn.Module, val_ds, info: distributed.DistInfo, config: TrainConfig) -> dict:
    """AP of ``model`` on the val set, on rank 0 only (the other ranks wait in the save after it); COCO models
    through the ``exact`` inference path that ``evaluate`` takes by default: the same answers, faster (chapter 09)."""
    if not info.is_main:
        return {}
    net = model if config.rotated else optimize_for_inference(model, "exact", info.device)
    metrics = evaluate_model(net, val_ds, device=info.device, batch_size=config.batch_size)
    say(info, "eval: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_NAMES if k in metrics))
    return metrics


