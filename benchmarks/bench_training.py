"""Training speed on this machine: images per second of one optimizer step, and of the data pipelines.

    python benchmarks/bench_training.py [--iters 5] [--warmup 2] [--threads N] [--device cpu]

A step is what ``rtmdet_lesson.train`` does per batch: normalise, forward, losses (assignment included),
backward, AdamW step and EMA update, on a fixed batch of sprites already augmented to the canvas, so the
pipeline's cost is left out; the pipelines are timed on their own (one process, the per-worker cost).
Each row is the median over ``--iters`` timed steps after ``--warmup`` untimed ones. bf16 rows use
``torch.autocast`` (CPUs with AMX or AVX-512 BF16, or CUDA).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rtmdet_lesson.data.coco import sprites_split
from rtmdet_lesson.data.collate import collate
from rtmdet_lesson.data.sprites import generate_sprites
from rtmdet_lesson.data.transforms import build_train_pipeline
from rtmdet_lesson.ema import ExpMomentumEMA
from rtmdet_lesson.preprocess import normalize
from rtmdet_lesson.presets import build_model
from rtmdet_lesson.runtime import pick_device
from rtmdet_lesson.schedule import param_groups

CASES = [  # (preset, canvas, batch)
    ("course-sprites", 320, 8),
    ("rtmdet-ins-tiny", 640, 4),
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sprites_dataset(root: str | None):
    """The sprites train split at ``root`` (default data/sprites), or 16 freshly generated images."""
    path = Path(root or "data/sprites")
    if (path / "train" / "annotations.json").is_file():
        return sprites_split(path, "train")
    tmp = Path(tempfile.mkdtemp(prefix="bench_sprites_"))
    generate_sprites(tmp, seed=0, n_train=16, n_val=0)
    return sprites_split(tmp, "train")


def fixed_batch(dataset, size: int, batch: int):
    """``batch`` samples through the stage-2 pipeline at ``size``, collated: (B, 3, S, S) uint8 + targets."""
    pipeline = build_train_pipeline(size, stage=2, recipe="tiny")
    rng = np.random.default_rng(0)
    return collate([pipeline(*dataset[i % len(dataset)], rng) for i in range(batch)])


def time_steps(preset: str, size: int, batch: int, dataset, amp, device, iters: int, warmup: int) -> float:
    """Median seconds of one full training step."""
    torch.manual_seed(0)
    model = build_model(preset, num_classes=len(dataset.class_names)).to(device).train()
    ema = ExpMomentumEMA(model)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    images, targets = fixed_batch(dataset, size, batch)
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        x = normalize(images.to(device))  # (B, 3, S, S)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            losses = model.loss(x, targets)
        (losses["loss_cls"] + losses["loss_bbox"] + losses.get("loss_mask", 0)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_pipeline(dataset, size: int, stage: int, recipe: str, samples: int) -> float:
    """Median seconds per sample of a training pipeline (mosaic/mixup caches warmed up first)."""
    pipeline = build_train_pipeline(size, stage=stage, recipe=recipe)
    rng = np.random.default_rng(0)
    items = [dataset[i % len(dataset)] for i in range(samples + 8)]
    for item in items[:8]:  # fill the caches so that mosaic and mixup really run
        pipeline(*item, rng)
    times = []
    for item in items[8:]:
        start = time.perf_counter()
        pipeline(*item, rng)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5, help="timed steps per row (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--data", default=None, help="sprites folder (default data/sprites, else generated)")
    parser.add_argument("--only", default=None, help="run only the presets whose name contains this")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dataset = sprites_dataset(args.data)
    print(f"# training throughput | {cpu_name()} | {torch.get_num_threads()} torch threads "
          f"({__import__('os').cpu_count()} logical CPUs) | torch {torch.__version__} | device {device}")
    print(f"# median of {args.iters} steps after {args.warmup} warm-up steps; a step = forward + losses + backward + "
          "AdamW + EMA on a fixed augmented batch")
    print(f"{'preset':<18}{'canvas':>7}{'batch':>6}{'precision':>10}{'s/step':>9}{'img/s':>8}")
    amps = [("fp32", None), ("bf16", torch.bfloat16)]
    if device.type == "cuda":
        amps.append(("fp16", torch.float16))
    for preset, size, batch in CASES:
        if args.only and args.only not in preset:
            continue
        for name, amp in amps:
            seconds = time_steps(preset, size, batch, dataset, amp, device, args.iters, args.warmup)
            print(f"{preset:<18}{size:>7}{batch:>6}{name:>10}{seconds:>9.2f}{batch / seconds:>8.1f}", flush=True)
    print("\n# data pipeline, one process (each DataLoader worker runs one of these)")
    print(f"{'pipeline':<34}{'canvas':>7}{'ms/img':>9}{'img/s':>8}")
    for label, size, stage, recipe in [("stage 1 (mosaic + mixup), tiny", 320, 1, "tiny"),
                                       ("stage 2 (resize, crop, HSV, flip)", 320, 2, "tiny"),
                                       ("stage 1 (mosaic + mixup), tiny", 640, 1, "tiny")]:
        seconds = time_pipeline(dataset, size, stage, recipe, samples=max(8, 4 * args.iters))
        print(f"{label:<34}{size:>7}{seconds * 1000:>9.1f}{1 / seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
