"""Running one training script on many processes with ``torchrun`` (chapter 07).

``torchrun --nproc_per_node=N -m rtmdet_lesson train ...`` starts N copies of the same program and tells each
its place through environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``). This module only reads
those, starts ``torch.distributed`` (NCCL between GPUs, gloo between CPU processes) and offers the three
collective steps the loop needs: average numbers for the log, make every rank's buffers equal to rank 0's,
and wait for each other. The gradient averaging itself is ``DistributedDataParallel``'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rtmdet_lesson.runtime import pick_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device`` and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: a single process, no process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes logs and checkpoints and runs the evaluation."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (it sets ``WORLD_SIZE`` and ``LOCAL_RANK``)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def launched_rank() -> int:
    """This process's rank under torchrun (0 outside it), readable before the process group exists."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def setup(device: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Start the process group when launched by ``torchrun``; otherwise describe a single process.

    One GPU per process: with CUDA the process uses ``cuda:LOCAL_RANK`` and NCCL; without, the CPU and gloo.
    ``device`` ("cpu", "cuda", "mps") overrides the choice; ``timeout_minutes`` bounds how long ranks wait
    for each other (rank 0's evaluation runs while the others wait at a barrier).
    """
    chosen = pick_device(device)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(device=chosen)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if chosen.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible; start torchrun "
                "with --nproc_per_node at most the number of GPUs."
            )
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
        backend = "nccl"
    elif chosen.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training supports CUDA (NCCL) or CPU (gloo), not {chosen.type}; "
                         "pass --device cpu or run a single process.")
    if not dist.is_initialized():
        bound = {"device_id": chosen} if backend == "nccl" else {}  # NCCL then knows each rank's GPU up front
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=timeout_minutes),
                                **bound)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=chosen, backend=backend)


def cleanup(info: DistInfo) -> None:
    """Leave the process group (all ranks together)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_true(flag: bool, info: DistInfo) -> bool:
    """True only if ``flag`` is true on every rank (so all ranks take the same branch, e.g. skip a step)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def any_true(flag: bool, info: DistInfo) -> bool:
    """True if ``flag`` is true on some rank (e.g. one rank was asked to stop: all stop at the same step)."""
    return not all_true(not flag, info)


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average a dict of numbers over the ranks (every rank gets the result; rank 0 logs it)."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=info.device, dtype=torch.float64)  # (V,)
    dist.all_reduce(t)
    return {k: v / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def broadcast_buffers(modules: list[torch.nn.Module], info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Gradients are averaged, so parameters agree on every rank; BatchNorm statistics are not (each rank sees
    its own images, and SyncBatchNorm is not available on CPU). Rank 0's are the ones checkpointed, so the
    loop calls this at the end of each epoch to keep the ranks identical.
    """
    if not info.distributed:
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` as a list indexed by rank (on every rank); ``[obj]`` for one process."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
