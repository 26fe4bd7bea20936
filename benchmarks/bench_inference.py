"""Where inference time goes: backbone, neck, head, candidate selection, NMS and mask decoding, timed apart.

    python benchmarks/bench_inference.py [--preset rtmdet-ins-tiny] [--size 640] [--runs 7] [--threads N]
    python benchmarks/bench_inference.py --backends [--runs 7] [--threads N]

One image of 480x640 (H x W, a typical COCO shape) letterboxed to a 640x640 canvas, batch 1, fp32, under
``torch.inference_mode``; median of ``--runs`` runs after one warm-up, for the ``eval`` and ``deploy``
post-processing presets.

The model is ``bench_speed.busy_model``: random, but given work as a trained one would have (BatchNorm
statistics calibrated on the input, classifier bias 0 so every (prior, class) pair scores about 0.5, and
object-sized masks). Both presets then run at their caps: ``nms_pre`` candidates per level into NMS and
``max_per_img`` masks decoded: the worst case for post-processing.

``--backends`` prints another table instead: forward and predict (``eval`` settings, 100 instances) of each inference
path of chapter 09 (``plain``, ``exact``, ``fast``) and of the same busy model exported to ONNX
(``deploy.export_onnx``) and run in ONNX Runtime (fp32, as many intra-op threads as torch has, its worker threads'
spin-wait off so that they do not hold the cores while the torch paths are timed after them), for course-sprites at
320 (a 240x320 image) and RTMDet-Ins-tiny at 640 (480x640). All eight timings of a preset are taken in turn within
every run (``bench_speed.interleaved_median_ms``), so that the shared machine's slow spells fall on all of them;
median of 2 x ``--runs``. It needs the deploy extra (``pip install -e .[deploy]``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_speed import (  # benchmarks/ is on sys.path when run as a script
    busy_model,
    canvas_input,
    cpu_name,
    interleaved_median_ms,
    sample_image,
)

from rtmdet_lesson.boxes import distance_to_box
from rtmdet_lesson.fast import low_precision_dtype, optimize_for_inference
from rtmdet_lesson.fast.dynamic_mask import dynamic_mask_logits
from rtmdet_lesson.fast.mask_resize import decode_masks, masks_to_original
from rtmdet_lesson.nms import batched_nms
from rtmdet_lesson.postprocess import CONFIGS, postprocess, select_candidates
from rtmdet_lesson.preprocess import letterbox_image, normalize
from rtmdet_lesson.priors import grid_priors

BACKEND_CASES = [("course-sprites", 320, (240, 320)), ("rtmdet-ins-tiny", 640, (480, 640))]  # preset, canvas, image


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
    out["postprocess (all)"], found = median_ms(lambda: postprocess(head, [letterbox], config, model.strides,
                                                                                decode_masks), runs)
    out["candidates_n"], out["kept_n"] = len(index), len(found[0])
    return out


def backends_table(runs: int) -> None:
    """Forward and predict ms of plain, exact, fast and ONNX Runtime, per preset, timed in turn (see the module doc)."""
    from rtmdet_lesson.deploy import export_onnx, load_onnx_model

    bf16 = low_precision_dtype(torch.device("cpu")) is not None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {cpu_name()}, {os.cpu_count()} logical CPUs, load average {load:.1f} at start | torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; onnxruntime {_ort_version()}, the same number of "
          f"intra-op threads, no spinning | batch 1 | median of {2 * runs} runs, all paths of a preset in turn")
    print(f"{'preset':<17}{'canvas':>7}  {'path':<24}{'forward ms':>11}{'predict ms':>11}{'instances':>10}"
          f"{'x plain fwd':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for preset, size, image_shape in BACKEND_CASES:
            image = sample_image(image_shape)
            x = canvas_input(image, size)  # (1, 3, S, S)
            model = busy_model(preset, x)
            nets = {"plain": model, "exact": optimize_for_inference(model, "exact"),
                    f"fast ({'bf16' if bf16 else 'fp32: no bf16 units'})": optimize_for_inference(model, "fast"),
                    "onnxruntime (fp32)": load_onnx_model(export_onnx(model, Path(tmp) / f"{preset}.onnx"), spin=False)}
            fns = []
            for net in nets.values():
                fns += [lambda net=net, x=x: net(x), lambda net=net, image=image: net.predict(image)]
            with torch.inference_mode():
                times = interleaved_median_ms(fns, 2 * runs)
                found = [len(net.predict(image)[0]) for net in nets.values()]
            plain_forward = times[0]
            for i, (name, kept) in enumerate(zip(nets, found, strict=True)):
                forward, predict = times[2 * i], times[2 * i + 1]
                print(f"{preset:<17}{size:>7}  {name:<24}{forward:>11.1f}{predict:>11.1f}{kept:>10d}"
                      f"{plain_forward / forward:>12.2f}", flush=True)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="rtmdet-ins-tiny")
    parser.add_argument("--size", type=int, default=640, help="square canvas side (multiple of 32)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--backends", action="store_true",
                        help="instead of the stages: forward and predict of plain, exact, fast and ONNX Runtime")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backends:
        backends_table(args.runs)
        return
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
