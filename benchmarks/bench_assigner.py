"""Time and peak memory of the dynamic soft-label assigner on a 640x640 image (8400 priors, 80 classes).

    python benchmarks/bench_assigner.py [--repeats 5] [--threads T]

On a machine shared with other busy processes, pass --threads 1: torch's intra-op thread pool slows down
badly when its threads have to wait for cores.

Each memory figure is measured in a fresh child process, on the second call: the peak resident set size
(Linux VmHWM, reset before the call) minus the resident size just before it, with glibc told to return
large blocks at once (MALLOC_MMAP_THRESHOLD_) so that freed memory is neither hidden nor counted twice.
"plain cls tensor" is the size of ONE (candidates x objects x classes) float32 tensor, which the
straightforward soft classification cost builds about five of (one-hot labels, repeated scores, soft
labels, scale factor, BCE).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from rtmdet_lesson.assigner import DynamicSoftLabelAssigner, candidate_mask, pad_targets
from rtmdet_lesson.priors import grid_priors

NUM_CLASSES = 80
CANVAS = 640


def make_batch(objects: list[int], seed: int = 0):
    """Synthetic but plausible inputs: boxes of 8-120 px anywhere, predictions around every prior."""
    gen = torch.Generator().manual_seed(seed)
    priors = grid_priors([(CANVAS // s, CANVAS // s) for s in (8, 16, 32)])  # (8400, 4)
    n = priors.shape[0]
    boxes, labels, centers = [], [], []
    for g in objects:
        wh = 8 + torch.rand(g, 2, generator=gen) * 112
        xy = torch.rand(g, 2, generator=gen) * (CANVAS - wh)
        boxes.append(torch.cat([xy, xy + wh], 1))  # (G, 4)
        labels.append(torch.randint(0, NUM_CLASSES, (g,), generator=gen))
        centers.append(xy + wh / 2)
    b = len(objects)
    logits = torch.randn(b, n, NUM_CLASSES, generator=gen) - 3  # (B, N, C)
    dist = 4 + torch.rand(b, n, 4, generator=gen) * 60  # (B, N, 4)
    pred = torch.cat([priors[:, :2] - dist[..., :2], priors[:, :2] + dist[..., 2:]], -1)  # (B, N, 4)
    gt_boxes, gt_labels, gt_centers, valid = pad_targets(boxes, labels, centers)
    return logits, pred, priors, gt_boxes, gt_labels, valid, gt_centers


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure_peak(objects: list[int]) -> int:
    """Peak extra bytes of one assignment (run in a child process; Linux only)."""
    inputs = make_batch(objects)
    assigner = DynamicSoftLabelAssigner()
    assigner(*inputs)  # warm-up: the first call also pages in code and allocates thread-pool state
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size
    before = _status("VmRSS")
    assigner(*inputs)
    return _status("VmHWM") - before


def peak_in_child(objects: list[int]) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = f"import bench_assigner as b, torch; torch.set_num_threads({torch.get_num_threads()}); "
    code += f"print(b.measure_peak({objects!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    return int(out.stdout.strip().splitlines()[-1])


def median_time(objects: list[int], repeats: int) -> tuple[float, int, int]:
    inputs = make_batch(objects)
    assigner = DynamicSoftLabelAssigner()
    assigner(*inputs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = assigner(*inputs)
        times.append(time.perf_counter() - start)
    num_candidates = int(candidate_mask(inputs[2][:, :2], inputs[3], inputs[5]).sum(1).max())
    return statistics.median(times), result.num_pos, num_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} {platform.processor() or platform.platform()}, {os.cpu_count()} CPUs")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(f"{CANVAS}x{CANVAS} input, 8400 priors, {NUM_CLASSES} classes, median of {args.repeats} runs\n")
    cases = [[5], [50], [200], [500], [5, 10, 20, 40, 5, 10, 20, 40]]
    print("| images x objects | candidates (max) | positives | time (ms) | peak memory (MB) | plain cls tensor (MB) |")
    print("|---" * 6 + "|")
    for objects in cases:
        seconds, num_pos, cand = median_time(objects, args.repeats)
        peak = peak_in_child(objects)
        plain = len(objects) * cand * max(objects) * NUM_CLASSES * 4
        name = f"1 x {objects[0]}" if len(objects) == 1 else f"{len(objects)} x {min(objects)}-{max(objects)}"
        peak_text = "n/a" if peak is None else f"{peak / 2**20:.0f}"
        print(f"| {name} | {cand} | {num_pos} | {seconds * 1000:.1f} | {peak_text} | {plain / 2**20:.0f} |")


if __name__ == "__main__":
    main()
