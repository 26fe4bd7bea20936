"""Where inference time goes: backbone, neck, head, candidate selection, NMS and mask decoding, timed apart.

    python benchmarks/bench_inference.py [--preset rtmdet-ins-tiny] [--size 640] [--runs 7] [--threads N]

One image of 480x640 (H x W, a typical COCO shape) letterboxed to a 640x640 canvas, batch 1, fp32, under
``torch.inference_mode``; median of ``--runs`` runs after one warm-up, for the ``eval`` and ``deploy``
post-processing presets.

The model is ``bench_speed.busy_model``: random, but given work as a trained one would have (BatchNorm
statistics calibrated on the input, classifier bias 0 so every (prior, class) pair scores about 0.5, and
object-sized masks). Both presets then run at their caps: ``nms_pre`` candidates per level into NMS and
``max_per_img`` masks decoded: the worst case for post-processing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from bench_speed import busy_model  # benchmarks/ is on sys.path when run as a script

from rtmdet_lesson.boxes import distance_to_box
from rtmdet_lesson.dynamic_mask import dynamic_mask_logits
from rtmdet_lesson.mask_resize import masks_to_original
from rtmdet_lesson.nms import batched_nms
from rtmdet_lesson.postprocess import CONFIGS, postprocess, select_candidates
from rtmdet_lesson.preprocess import letterbox_image, normalize
from rtmdet_lesson.priors import grid_priors


def median_ms(fn, runs: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), result


def stage_times(model, x, letterbox, config, runs: int) -> dict:
    """Milliseconds per stage, and the number of candidates and of kept instances."""
    out = {}
    out["backbone"], feats = median_ms(lambda: model.backbone(x), runs)
    out["neck"], pyramid = median_ms(lambda: model.neck(feats), runs)
    out["head"], head = median_ms(lambda: model.head(pyramid), runs)
    sizes = [tuple(s.shape[-2:]) for s in head.cls_scores]
    canvas = (sizes[0][0] * 8, sizes[0][1] * 8)

    def candidates():
        priors = grid_priors(sizes, model.strides, device=x.device)  # (N, 4)
        index, labels, scores = select_candidates([s[0] for s in head.cls_scores], config.score_thr, config.nms_pre)
        distances = torch.cat([p[0].permute(1, 2, 0).reshape(-1, 4) for p in head.bbox_preds])  # (N, 4)
        boxes = letterbox.boxes_to_original(distance_to_box(priors[index, :2], distances[index], max_shape=canvas))
        return priors, index, labels, scores, boxes

    out["candidates"], (priors, index, labels, scores, boxes) = median_ms(candidates, runs)
    out["nms"], keep = median_ms(
        lambda: batched_nms(boxes, scores, labels, config.iou_threshold, max_keep=config.max_per_img), runs
    )
    kept = index[keep]

    def masks():
        kernels = torch.cat([k[0].permute(1, 2, 0).reshape(-1, k.shape[1]) for k in head.kernel_preds])
        logits = dynamic_mask_logits(head.mask_feats, kernels[kept], priors[kept], torch.zeros_like(kept))
        return masks_to_original(logits, letterbox, config.mask_thr)

    out["masks"], _ = median_ms(masks, runs)
    out["postprocess (all)"], found = median_ms(lambda: postprocess(head, [letterbox], config, model.strides), runs)
    out["candidates_n"], out["kept_n"] = len(index), len(found[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="rtmdet-ins-tiny")
    parser.add_argument("--size", type=int, default=640, help="square canvas side (multiple of 32)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image = torch.randint(0, 256, (3, 480, 640), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    canvas, letterbox = letterbox_image(image, (args.size, args.size))
    x = normalize(canvas[None])  # (1, 3, S, S)
    model = busy_model(args.preset, x)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {args.preset}, 480x640 image on a {args.size}x{args.size} canvas, batch 1, fp32, CPU")
    print(f"# machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs, "
          f"load average {load:.1f} at start | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"median of {args.runs} runs")
    results = {}
    with torch.inference_mode():
        for name, config in CONFIGS.items():
            results[name] = stage_times(model, x, letterbox, config, args.runs)
    stages = ["backbone", "neck", "head", "candidates", "nms", "masks"]
    print(f"{'stage (ms)':<20}" + "".join(f"{name:>10}" for name in results))
    for stage in stages:
        print(f"{stage:<20}" + "".join(f"{r[stage]:>10.1f}" for r in results.values()))
    print(f"{'sum of stages':<20}" + "".join(f"{sum(r[s] for s in stages):>10.1f}" for r in results.values()))
    print(f"{'postprocess (all)':<20}" + "".join(f"{r['postprocess (all)']:>10.1f}" for r in results.values()))
    print(f"{'candidates into NMS':<20}" + "".join(f"{r['candidates_n']:>10d}" for r in results.values()))
    print(f"{'instances kept':<20}" + "".join(f"{r['kept_n']:>10d}" for r in results.values()))


if __name__ == "__main__":
    main()
