"""CPU speed of RTMDet-R's rotated pieces: the IoU loss, the assigner's pairwise IoU, rotated NMS, a training step.

    python benchmarks/bench_rotated.py [--threads T] [--runs 5]

mmcv's differentiable rotated IoU (``diff_iou_rotated_2d``, the one mmrotate's ``RotatedIoULoss`` calls) sorts
its vertices in a compiled op that mmcv builds for CUDA and Cambricon MLU only, none for the CPU, so the
reference cannot compute RTMDet-R's box loss on a CPU at all; this prints what
``rtmdet_lesson.rotated`` takes for it. Boxes are random, 8-120 px, at any angle, on a 1024 x 1024 canvas;
the aligned pairs overlap (each target is its prediction moved and turned a little), as positives do.
Median of ``--runs`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from rtmdet_lesson import build_model
from rtmdet_lesson.rotated import rotated_iou, rotated_nms


def random_rboxes(n: int, gen: torch.Generator, canvas: float = 1024.0) -> torch.Tensor:
    centers = torch.rand(n, 2, generator=gen) * canvas
    sizes = torch.rand(n, 2, generator=gen) * 112 + 8
    angles = (torch.rand(n, 1, generator=gen) - 0.5) * math.pi
    return torch.cat([centers, sizes, angles], dim=1)


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []

    for k in (100, 1000, 10000):  # positives per batch: the loss's aligned IoU, forward + backward
        pred = random_rboxes(k, gen).requires_grad_()
        target = (pred.detach() + torch.randn(k, 5, generator=gen) * torch.tensor([3.0, 3.0, 3.0, 3.0, 0.1])).abs()

        def loss_step(pred=pred, target=target):
            (1 - rotated_iou(pred, target, aligned=True)).sum().backward()

        rows.append((f"IoU loss, {k} pairs, forward + backward", median_ms(loss_step, args.runs)))

    preds, gts = random_rboxes(3000, gen), random_rboxes(30, gen)  # candidates x objects, as the assigner sees them
    rows.append(("pairwise IoU, 3000 x 30 boxes", median_ms(lambda: rotated_iou(preds, gts), args.runs)))

    boxes, scores = random_rboxes(2000, gen), torch.rand(2000, generator=gen)  # nms_pre candidates
    rows.append(("rotated NMS, 2000 boxes, IoU 0.1", median_ms(lambda: rotated_nms(boxes, scores, 0.1), args.runs)))

    torch.manual_seed(0)
    model = build_model("rtmdet-r-tiny", num_classes=15)
    x = torch.randn(2, 3, 320, 320)
    targets = [dict(rboxes=random_rboxes(10, gen, canvas=320.0), labels=torch.randint(0, 15, (10,), generator=gen))
               for _ in range(2)]

    def train_step():
        losses = model.loss(x, targets)
        model.zero_grad()
        (losses["loss_cls"] + losses["loss_bbox"]).backward()

    rows.append(("rtmdet-r-tiny step, 2 x 320 x 320, 10 objects each", median_ms(train_step, args.runs)))

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    width = max(len(name) for name, _ in rows)
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:9.1f} ms")


if __name__ == "__main__":
    main()
