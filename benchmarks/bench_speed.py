"""Speed of the plain fp32 path and of the fast path, per preset: the README's table (chapter 09).

    python benchmarks/bench_speed.py [--runs 7] [--train-iters 12] [--train-rounds 3] [--workers 0] [--pieces]
                                     [--compile]
    python benchmarks/bench_speed.py --whole-run

Per preset (course-sprites at 320, RTMDet-Ins-tiny and -s at 640) and mode (``plain``: the model as built and
the reference's training computation, fp32; ``fast``: ``optimize_for_inference(model, "fast")`` and
``train --fast``):

- forward ms: ``model(x)`` on one letterboxed image, batch 1, median of 2 x ``--runs``, timed in turn with
  predict (``interleaved_median_ms``);
- predict ms: ``predict`` on a 480x640 uint8 image (240x320 for the 320 preset) with 100 instances kept:
  letterbox, normalise, forward, candidates, NMS, dynamic masks and their resizing to the image;
- predict MiB: peak memory of one predict above what the process held before it (CPU: resident set,
  measured in a fresh process, see ``probe_memory``; CUDA: allocated tensors);
- train img/s: ``rtmdet_lesson.train`` itself on the sprites train split (data loading in ``--workers``
  processes, default 0: in the training process; reading, augmentation, forward, losses, backward, AdamW, EMA),
  images per second from the median iteration time of ``--train-iters`` iterations (three times as many for
  the course preset, whose steps are short) after 3 warm-up ones. Plain and fast train in two processes that
  take turns iteration by iteration (``lockstep_rates``), so that a slow spell of a shared machine falls on
  both; train MiB: peak memory of 3 iterations (model, optimizer and EMA included; workers=0). ``plain`` trains
  as the reference computes (fp32, NCHW, the Ins head's cls tower run twice, every image decoded when it is
  used); ``fast`` is ``train --fast`` (bf16, channels-last, the cls tower once).

The models are randomly initialised but made busy as trained ones: BN statistics calibrated on the input,
classifier bias 0 (every prior scores about 0.5, so NMS keeps ``max_per_img`` = 100), and a mask kernel giving
each instance a diamond-shaped mask 5 strides of its level across, so that decoding works on object-sized
masks (a random kernel would switch masks on over the whole image; ``--pieces`` times that worst case too).

``--pieces`` adds tables of the parts: each inference speed-up on its own for RTMDet-Ins-tiny at 640, its
decoding stage by stage (with chapter 08's full-canvas mask resizing for comparison, and with masks that
cover the whole image), each training speed-up for the course preset, its convs alone in bf16 and fp32,
channels-last and NCHW, the augmentation pipeline's cost per image and a sample's reading cost, and a table
of bare training steps from the shipped course model's weights (the state a run spends most of its time in),
with and without the Dice loss's logit floor. ``--compile`` adds a ``torch.compile`` row (minutes of compiling
on a CPU).

``--whole-run`` prints only one table: the shipped recipe (``WHOLE_RUN_RECIPE``) trained start to finish in the
plain loop and with ``--fast``, the two taking turns iteration by iteration; the seconds of each (and those of its
evaluations), its training images per second and final AP, and the ratio over each block of epochs between
evaluations (40-46 minutes on a 2-core CPU), for the whole runs and for their training alone (the evaluations, the
same fp32 work in both, taken out). Unlike the main table's window of a fresh model's first iterations, it holds
the evaluations and the trained model's three times as many positives, whose losses both loops compute alike.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import rtmdet_lesson.fast.losses as fast_losses
import rtmdet_lesson.fast.training as fast_training
from rtmdet_lesson.boxes import distance_to_box
from rtmdet_lesson.checkpoint import load_checkpoint_model
from rtmdet_lesson.data.coco import sprites_split
from rtmdet_lesson.data.collate import AugmentedDataset, collate
from rtmdet_lesson.data.transforms import build_train_pipeline
from rtmdet_lesson.dynamic_mask import LAYER_SHAPES, NUM_DYNAMIC_PARAMS
from rtmdet_lesson.ema import ExpMomentumEMA
from rtmdet_lesson.fast import SpeedOptions, low_precision_dtype, optimize_for_inference, prepare_for_training
from rtmdet_lesson.fast.dynamic_mask import dynamic_mask_logits
from rtmdet_lesson.fast.mask_resize import decode_masks, masks_to_original
from rtmdet_lesson.nms import batched_nms
from rtmdet_lesson.postprocess import EVAL, gather_priors, mask_logits_to_original, postprocess, select_candidates
from rtmdet_lesson.preprocess import letterbox_image, normalize
from rtmdet_lesson.presets import build_model
from rtmdet_lesson.priors import grid_priors
from rtmdet_lesson.schedule import param_groups
from rtmdet_lesson.train import AMP_DTYPES, TrainConfig, build_pipeline, fast_training_settings, train

CASES = [  # (preset, canvas, image (H, W), training batch, timed training iterations per --train-iters)
    ("course-sprites", 320, (240, 320), 8, 3),  # short steps, so three times as many: a steadier median
    ("rtmdet-ins-tiny", 640, (480, 640), 4, 1),
    ("rtmdet-ins-s", 640, (480, 640), 4, 1),
]
OBJECT_HALF_SIZE = 2.5  # strides of the prior's level: the synthetic masks are 5 strides across
SHIPPED = Path("data/course-sprites.pth")  # the course model trained by the shipped recipe
# the shipped recipe at the default threads, data loading in the training process (benchmarks/RESULTS.md, "Whole runs")
WHOLE_RUN_RECIPE = dict(epochs=20, batch_size=8, lr=0.002, warmup_iters=200, mosaic=False, mixup=False,
                        stage2_epochs=2, eval_interval=5, workers=0, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# measuring


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved_median_ms(fns: list, runs: int) -> list[float]:
    """Median ms of each function, timed in turn within every run, so that a slow phase of the machine hits all
    of them alike and their ratio holds (timing one for all runs, then the next, lets drift into the ratio)."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, spent in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [1000 * statistics.median(spent) for spent in times]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def peak_mib(fn) -> float:
    """Peak memory of ``fn()`` above the memory before it, in MiB. CUDA: allocated tensors; CPU (Linux): the
    process's resident set, in a process whose allocator returns freed blocks at once (see ``probe``)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark VmHWM to the current RSS
        before = _rss_kib("VmRSS")
    except OSError:
        return float("nan")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def probe_memory(*args: str) -> float:
    """Run ``--probe ARGS`` in a fresh process and return the MiB it prints.

    A fresh process, because glibc keeps freed memory for reuse, so a second measurement in a process that has
    already run the same work sees no growth; ``MALLOC_MMAP_THRESHOLD_`` makes large blocks go straight back.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, __file__, "--probe", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {args} failed:\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------------------------
# a busy model


def diamond_kernel(half_size: float = OBJECT_HALF_SIZE) -> torch.Tensor:
    """169 dynamic parameters whose mask logit is ``4 - 4 * (|dx| + |dy|) / (half_size * stride)``: a diamond.

    Layer 0 makes relu(+-rel_x), relu(+-rel_y) (rel = offset / (8 * stride)), layer 1 passes them on, layer 2
    sums them with weight -a and adds 4, so the logit is 0 at an L1 distance of half_size strides.
    """
    (o0, i0), (o1, i1), (o2, i2) = LAYER_SHAPES
    w0, w1, w2 = torch.zeros(o0, i0), torch.zeros(o1, i1), torch.zeros(o2, i2)
    for channel, (coord, sign) in enumerate([(0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0)]):
        w0[channel, coord] = sign
        w1[channel, channel] = 1.0
        w2[0, channel] = -4.0 * 8 / half_size
    b0, b1, b2 = torch.zeros(o0), torch.zeros(o1), torch.full((o2,), 4.0)
    kernel = torch.cat([w0.flatten(), w1.flatten(), w2.flatten(), b0, b1, b2])
    assert kernel.numel() == NUM_DYNAMIC_PARAMS
    return kernel


def busy_model(preset: str, x: torch.Tensor, masks: str = "objects"):
    """A random model that behaves like a trained one at inference (see the module doc)."""
    torch.manual_seed(0)
    model = build_model(preset)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # one pass sets the running statistics to this batch's
    model.train()
    with torch.no_grad():
        model(x)
        for rtm_cls in model.head.rtm_cls:
            rtm_cls.bias.zero_()
        if masks == "objects":
            for rtm_kernel in model.head.rtm_kernel:
                rtm_kernel.weight.zero_()
                rtm_kernel.bias.copy_(diamond_kernel())
    return model.eval()


def sample_image(shape: tuple[int, int]) -> torch.Tensor:
    return torch.randint(0, 256, (3, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def canvas_input(image: torch.Tensor, size: int) -> torch.Tensor:
    canvas, _ = letterbox_image(image, (size, size))
    return normalize(canvas[None])  # (1, 3, S, S)


# ---------------------------------------------------------------------------------------------------------------
# training throughput: the real loop


def sprites_root(tmp: Path) -> Path:
    if (Path("data/sprites/train/annotations.json")).is_file():
        return Path("data/sprites")
    from rtmdet_lesson.data.sprites import generate_sprites

    generate_sprites(tmp / "sprites", seed=0, n_train=64, n_val=0)
    return tmp / "sprites"


def training_settings(mode: str) -> dict:
    """The ``TrainConfig`` settings of a mode: ``plain``, the reference's loop in fp32 (NCHW, the Ins head's cls
    tower run twice), or ``fast``, the defaults (one cls pass) plus what ``train --fast`` sets."""
    plain = {"amp": "off", "channels_last": False, "single_cls_pass": False}
    fast = {"single_cls_pass": True, **fast_training_settings(torch.device("cpu"))}
    return plain if mode == "plain" else {**plain, **fast}


def iteration_seconds(preset: str, size: int, batch: int, settings: dict, iters: int, workers: int, data: Path,
                      tmp: Path) -> list[float]:
    """Seconds of ``iters`` iterations of ``rtmdet_lesson.train`` (time between consecutive iterations), after 3
    warm-up ones; ``iters=0`` runs the 3 warm-up iterations and gives []."""
    out = tempfile.mkdtemp(prefix=f"{preset}-", dir=tmp)  # train refuses a folder holding another run
    config = TrainConfig(preset=preset, data=str(data), out=out, image_size=size, epochs=100,
                         batch_size=batch, warmup_iters=10, mosaic=False, mixup=False, workers=workers,
                         progress=False, **settings)
    stamps = []
    train(config, max_iters=3 + iters, on_step=lambda record: stamps.append(time.perf_counter()))
    return list(np.diff(stamps[2:])) if iters else []


def _lockstep_child(conn, config: dict, fp32_depthwise: bool, max_iters: int | None, threads: int) -> None:
    """One run of ``lockstep_runs``, in its own process: ``train`` itself, which after every iteration sends
    ``("step", seconds)``, the seconds since it was handed the turn, and waits for the next turn; when ``train``
    returns, ``("done", seconds, metrics)``, the seconds of what it did after its last iteration."""
    torch.set_num_threads(threads)
    if not fp32_depthwise:  # measure what the fp32 depthwise convs buy by switching them back
        fast_training.DepthwiseConvFp32.forward = torch.nn.Conv2d.forward
    conn.recv()  # the first turn
    turn = [time.perf_counter()]

    def pass_turn(record: dict) -> None:
        conn.send(("step", time.perf_counter() - turn[0]))
        conn.recv()
        turn[0] = time.perf_counter()

    result = train(TrainConfig(**config), max_iters=max_iters, on_step=pass_turn)
    conn.send(("done", time.perf_counter() - turn[0], result["metrics"]))


def lockstep_runs(configs: list[dict], max_iters: int | None = None,
                  fp32_depthwise: list[bool] | None = None) -> list[tuple[list[float], dict]]:
    """Run ``rtmdet_lesson.train`` on each of ``configs`` (``TrainConfig`` fields) in its own process, the processes
    taking turns iteration by iteration, so that every iteration of one has a neighbour of the others seconds away:
    on a shared machine whose speed drifts from minute to minute the drift falls on all of them alike (the ratio of
    two runs taken one after the other moves by 10-20 % here). A turn is one iteration with whatever the loop did
    before it (an evaluation, a checkpoint); the last turn is what ``train`` did after its last iteration. Returns
    each run's turn seconds and final metrics. ``fp32_depthwise[i]`` False runs run i's depthwise convs in bf16
    under bf16 autocast. A run with DataLoader workers (``workers`` > 0) keeps preparing batches during the other
    runs' turns, which hides part of its data loading."""
    context = multiprocessing.get_context("spawn")  # a fresh process: no OpenMP state copied by fork
    pipes, children = [], []
    for config, fp32 in zip(configs, fp32_depthwise or [True] * len(configs), strict=True):
        ours, theirs = context.Pipe()
        # not a daemon: a daemonic process may not start the DataLoader workers of --workers > 0
        child = context.Process(target=_lockstep_child, daemon=False,
                                args=(theirs, config, fp32, max_iters, torch.get_num_threads()))
        child.start()
        pipes.append(ours)
        children.append(child)
    turns, metrics = [[] for _ in configs], [None] * len(configs)
    try:
        while any(m is None for m in metrics):
            for i, (conn, config) in enumerate(zip(pipes, configs, strict=True)):
                if metrics[i] is not None:
                    continue
                conn.send(None)  # your turn
                try:
                    kind, seconds, *rest = conn.recv()
                except (EOFError, ConnectionError):
                    raise RuntimeError(f"the training process of {config} stopped (its traceback is above)") from None
                turns[i].append(seconds)
                if kind == "done":
                    metrics[i] = rest[0]
    finally:
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
    return list(zip(turns, metrics, strict=True))


def lockstep_rates(preset: str, size: int, batch: int, settings: list[dict], iters: int, workers: int, data: Path,
                   tmp: Path, fp32_depthwise: list[bool] | None = None) -> list[float]:
    """Images per second of each of ``settings``: the batch over the median of ``iters`` iterations of
    ``rtmdet_lesson.train`` (after 3 warm-up ones), trained in turn by ``lockstep_runs``."""
    runs_dir = Path(tempfile.mkdtemp(prefix="lockstep-", dir=tmp))  # train refuses a folder holding another run
    configs = [dict(preset=preset, data=str(data), out=str(runs_dir / str(i)), image_size=size, epochs=100,
                    batch_size=batch, warmup_iters=10, mosaic=False, mixup=False, workers=workers, progress=False,
                    **setting) for i, setting in enumerate(settings)]
    runs = lockstep_runs(configs, max_iters=3 + iters, fp32_depthwise=fp32_depthwise)
    return [batch / statistics.median(turns[3:-1]) for turns, _ in runs]


def whole_runs_table(data: Path, tmp: Path) -> None:
    """``--whole-run``: the shipped recipe trained start to finish in the reference loop and with ``--fast``, taking
    turns iteration by iteration (``lockstep_runs``): evaluations, checkpoints and the learning model's growing
    number of positives included, the host's drift cancelled. The ratios are given for the whole runs and for their
    training alone: the evaluations (the same fp32 ``exact`` path in both loops, timed in each run's log) taken out."""
    epochs, block = WHOLE_RUN_RECIPE["epochs"], WHOLE_RUN_RECIPE["eval_interval"]
    modes = ("plain", "fast")
    configs = [dict(preset="course-sprites", data=str(data), out=str(tmp / f"whole-{mode}"), progress=False,
                    **WHOLE_RUN_RECIPE, **training_settings(mode)) for mode in modes]
    runs = lockstep_runs(configs)
    images = (len(runs[0][0]) - 1) * WHOLE_RUN_RECIPE["batch_size"]  # one turn per iteration, and the last one
    # each run's evaluation seconds per block of epochs: the evaluation after epoch e falls in block (e - 1) // block
    evals = []
    for config in configs:
        per_block = [0.0] * math.ceil(epochs / block)
        for line in (Path(config["out"]) / "log.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("event") == "eval":
                per_block[(record["epoch"] - 1) // block] += record["seconds"]
        evals.append(per_block)
    flags = [f"--{name}" if value is True else f"--no-{name}" if value is False else f"--{name} {value}"
             for name, value in WHOLE_RUN_RECIPE.items()]  # the train command's flags, as in RESULTS.md
    print(f"\n# whole runs of the shipped recipe, course-sprites, in turn: {' '.join(flags).replace('_', '-')}")
    print(f"{'mode':<8}{'seconds':>9}{'of which eval':>15}{'train img/s':>13}{'bbox AP':>9}{'segm AP':>9}")
    for mode, (turns, metrics), per_block in zip(modes, runs, evals, strict=True):
        rate = images / (sum(turns) - sum(per_block))
        print(f"{mode:<8}{sum(turns):>9.0f}{sum(per_block):>15.0f}{rate:>13.1f}{metrics['bbox_AP']:>9.3f}"
              f"{metrics['segm_AP']:>9.3f}")
    (plain, _), (fast, _) = runs
    per_epoch = (len(plain) - 1) // epochs
    # block k: its iterations and the evaluation after them, which falls in the next block's first turn
    edges = [0, *range(1 + per_epoch * block, len(plain) - 1, per_epoch * block), len(plain)]
    spans = list(itertools.pairwise(edges))
    whole = [sum(plain[a:b]) / sum(fast[a:b]) for a, b in spans]
    training = [(sum(plain[a:b]) - p) / (sum(fast[a:b]) - f) for (a, b), p, f in zip(spans, *evals, strict=True)]
    for name, total, blocks in (("whole runs", sum(plain) / sum(fast), whole),
                                ("training alone", (sum(plain) - sum(evals[0])) / (sum(fast) - sum(evals[1])),
                                 training)):
        print(f"plain / fast, {name}: {total:.2f}; each {block} epochs: {', '.join(f'{r:.2f}' for r in blocks)}")


# ---------------------------------------------------------------------------------------------------------------
# the tables


def decoding_stages(model, x: torch.Tensor, image: torch.Tensor, runs: int) -> dict[str, float]:
    """Milliseconds of each decoding stage of ``postprocess`` (eval settings) on the fast path's outputs."""
    net = optimize_for_inference(model, "fast")
    with torch.inference_mode():
        out = net(x)
        _, box = letterbox_image(image, tuple(x.shape[-2:]))
        sizes = [tuple(s.shape[-2:]) for s in out.cls_scores]
        priors = grid_priors(sizes, net.strides)  # (N, 4)

        def candidates():
            index, labels, scores = select_candidates([s[0] for s in out.cls_scores], EVAL.score_thr, EVAL.nms_pre)
            distances = gather_priors([p[0] for p in out.bbox_preds], index)
            boxes = box.boxes_to_original(distance_to_box(priors[index, :2], distances, max_shape=x.shape[-2:]))
            return index, labels, scores, boxes

        index, labels, scores, boxes = candidates()
        keep = batched_nms(boxes, scores, labels, EVAL.iou_threshold, max_keep=EVAL.max_per_img)
        kept = index[keep]

        def mask_logits():
            kernels = gather_priors([k[0] for k in out.kernel_preds], kept)  # (K, 169)
            return dynamic_mask_logits(out.mask_feats, kernels, priors[kept], torch.zeros_like(kept))

        logits = mask_logits()
        return {
            "forward (fast path)": median_ms(lambda: net(x), runs),
            f"candidates: threshold, top-k, boxes ({len(index)})": median_ms(candidates, runs),
            f"NMS ({len(index)} -> {len(kept)})": median_ms(
                lambda: batched_nms(boxes, scores, labels, EVAL.iou_threshold, max_keep=EVAL.max_per_img), runs),
            f"dynamic mask head ({len(kept)} x {tuple(logits.shape[1:])})": median_ms(mask_logits, runs),
            "masks to the image: windows (chapter 09)": median_ms(lambda: masks_to_original(logits, box), runs),
            "masks to the image: full canvas (chapter 08)": median_ms(
                lambda: mask_logits_to_original(logits, box) > 0, runs),
            "all of postprocess (windows)": median_ms(
                lambda: postprocess(out, [box], EVAL, net.strides, decode_masks), runs),
        }


def main_table(args, data: Path, tmp: Path) -> None:
    modes = ["plain", "fast"]
    print(f"{'preset':<17}{'canvas':>7}{'mode':>6}{'forward ms':>12}{'predict ms':>12}{'instances':>10}"
          f"{'predict MiB':>13}{'train batch':>12}{'train img/s':>12}{'train MiB':>11}")
    for preset, size, image_shape, batch, iters_scale in CASES:
        if args.only and args.only not in preset:
            continue
        image = sample_image(image_shape)
        x = canvas_input(image, size)
        model = busy_model(preset, x)
        rates = [float("nan")] * len(modes)
        if args.train_iters:
            rates = lockstep_rates(preset, size, batch, [training_settings(m) for m in modes],
                                   iters_scale * args.train_iters, args.workers, data, tmp)
        for mode, img_s in zip(modes, rates, strict=True):
            net = model if mode == "plain" else optimize_for_inference(model, "fast")
            with torch.inference_mode():
                forward, predict = interleaved_median_ms(
                    [lambda net=net, x=x: net(x), lambda net=net, image=image: net.predict(image)], 2 * args.runs)
                found = net.predict(image)[0]
            predict_mib = probe_memory("predict", preset, mode, str(data))
            train_mib = probe_memory("train", preset, mode, str(data)) if args.train_iters else float("nan")
            print(f"{preset:<17}{size:>7}{mode:>6}{forward:>12.1f}{predict:>12.1f}{len(found):>10d}"
                  f"{predict_mib:>13.0f}{batch:>12d}{img_s:>12.1f}{train_mib:>11.0f}", flush=True)


def pieces_table(args, data: Path, tmp: Path) -> None:
    preset, size, image_shape, _, _ = CASES[1]
    image = sample_image(image_shape)
    x = canvas_input(image, size)
    model = busy_model(preset, x)
    print(f"\n# each piece on its own: {preset}, {size}x{size}, batch 1, forward ms (median of {args.runs})")
    print(f"{'inference forward':<44}{'ms':>8}{'x plain':>9}")
    low = SpeedOptions(low_precision=True)
    rows = [("plain (the model as built)", SpeedOptions()),
            ("fold BN into convs", SpeedOptions(fold_bn=True)),
            ("cls tower once", SpeedOptions(single_cls_pass=True)),
            ("channels-last", SpeedOptions(channels_last=True)),
            ("bf16 autocast alone", low),
            ("exact = fold + once + channels-last", "exact"),
            ("fast = exact + bf16", "fast")]
    if args.compile:
        rows.append(("compile = fast + torch.compile", "compile"))
    plain_ms = None
    with torch.inference_mode():
        for label, speed in rows:
            net = optimize_for_inference(model, speed)
            start = time.perf_counter()
            net(x)  # the first call: where torch.compile compiles
            first = time.perf_counter() - start
            ms = median_ms(lambda net=net: net(x), args.runs)
            plain_ms = plain_ms or ms
            note = f"   (first call {first:.0f} s: compiling)" if speed == "compile" else ""
            print(f"{label:<44}{ms:>8.1f}{plain_ms / ms:>9.2f}{note}", flush=True)

    print(f"\n# decoding {preset}'s fast-path outputs into 100 instances on the {image_shape[0]}x{image_shape[1]} "
          "image, stage by stage (ms)")
    print(f"{'stage':<52}{'object masks':>13}{'masks everywhere':>17}")
    stages = {kind: decoding_stages(busy_model(preset, x, masks=kind), x, image, args.runs)
              for kind in ("objects", "random")}
    for stage in stages["objects"]:
        print(f"{stage:<52}{stages['objects'][stage]:>13.1f}{stages['random'][stage]:>17.1f}", flush=True)

    if not args.train_iters:
        return
    preset, size, _, batch, _ = CASES[0]
    print(f"\n# training pieces: {preset}, {size}x{size}, batch {batch}, img/s of the real loop "
          f"({args.train_iters} iterations after 3; the rows take turns iteration by iteration, the last one alone)")
    print(f"{'training':<44}{'img/s':>8}{'x plain':>9}")
    plain, fast = training_settings("plain"), training_settings("fast")
    rows = [("plain: the reference loop in fp32", plain, True),  # (label, settings, fp32 depthwise)
            ("cls tower once (the default)", {**plain, "single_cls_pass": True}, True),
            ("channels-last", {**plain, "channels_last": True}, True),
            ("bf16 autocast (depthwise in fp32)", {**plain, "amp": "bf16"}, True),
            ("bf16 autocast, depthwise in bf16 too", {**plain, "amp": "bf16"}, False),
            ("fast = once + bf16 + channels-last", fast, True)]
    rates = lockstep_rates(preset, size, batch, [settings for _, settings, _ in rows], args.train_iters,
                           args.workers, data, tmp, [fp32 for _, _, fp32 in rows])
    # a DataLoader worker would prepare batches during the other rows' turns: this row runs on its own
    alone = batch / statistics.median(iteration_seconds(preset, size, batch, fast, args.train_iters,
                                                        args.workers + 1, data, tmp))
    labels = [label for label, _, _ in rows] + [f"fast, {args.workers + 1} DataLoader worker(s), on its own"]
    for label, rate in zip(labels, [*rates, alone], strict=True):
        print(f"{label:<44}{rate:>8.1f}{rate / rates[0]:>9.2f}", flush=True)
    conv_settings_table(args)

    print(f"\n# the augmentation pipeline per image, one process (each DataLoader worker runs one), {size}x{size}")
    print(f"{'pipeline':<44}{'ms/img':>8}{'img/s':>9}")
    dataset = sprites_split(data, "train")
    for label, stage in [("stage 1: mosaic + mixup, resize, crop, HSV, flip", 1),
                         ("stage 2: resize, crop, HSV, flip", 2)]:
        seconds = pipeline_seconds(dataset, size, stage, samples=max(16, 4 * args.train_iters))
        print(f"{label:<44}{1000 * seconds:>8.1f}{1 / seconds:>9.1f}", flush=True)
    order = itertools.count()
    (ms,) = interleaved_median_ms([lambda: dataset[next(order) % len(dataset)]], runs=max(64, 8 * args.train_iters))
    print(f"{'reading a sample: image and masks decoded':<44}{ms:>8.2f}{1000 / ms:>9.1f}", flush=True)
    if SHIPPED.is_file():
        trained_steps_table(args, data)


CONV_SETTINGS = {"bf16 channels-last": (torch.bfloat16, True), "bf16 NCHW": (torch.bfloat16, False),
                 "fp32 channels-last": (torch.float32, True), "fp32 NCHW": (torch.float32, False)}


def conv_step(shape: tuple, conv: torch.nn.Conv2d, dtype: torch.dtype, channels_last: bool):
    """Forward and backward of one conv of ``conv``'s settings on an input of ``shape``, alone: ``step()``."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=layout)
    x.requires_grad_(shape[1] != 3)  # the network's input gets no gradient
    w = conv.weight.detach().to(dtype).contiguous(memory_format=layout).requires_grad_()
    settings = (conv.stride, conv.padding, conv.dilation, conv.groups)
    grad = torch.randn_like(F.conv2d(x.detach(), w.detach(), None, *settings))
    return lambda: torch.autograd.grad(F.conv2d(x, w, None, *settings), [t for t in (x, w) if t.requires_grad], grad)


def conv_settings_table(args) -> None:
    """Each distinct conv of the course preset at its training shape, forward and backward alone, in each of
    ``CONV_SETTINGS`` (timed in turn): the sum over the network's convs and for how many each setting is fastest
    (within 0.03 ms). The depthwise convs are left out: ``--fast`` runs them in fp32 channels-last."""
    preset, size, _, batch, _ = CASES[0]
    model = prepare_for_training(build_model(preset))  # the cls tower once, as train runs it
    inputs = collections.Counter()  # (input shape, conv) -> times the forward pass runs it
    hooks = [conv.register_forward_hook(lambda conv, args_, out: inputs.update([(tuple(args_[0].shape), conv)]))
             for conv in model.modules() if isinstance(conv, torch.nn.Conv2d) and conv.groups == 1]
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size))
    for hook in hooks:
        hook.remove()
    totals, fastest = dict.fromkeys(CONV_SETTINGS, 0.0), dict.fromkeys(CONV_SETTINGS, 0)
    for (shape, conv), count in inputs.items():
        ms = interleaved_median_ms([conv_step(shape, conv, *setting) for setting in CONV_SETTINGS.values()], args.runs)
        for name, spent in zip(CONV_SETTINGS, ms, strict=True):
            totals[name] += count * spent
            fastest[name] += count * (spent <= min(ms) + 0.03)
    convs = sum(inputs.values())
    print(f"\n# each of {preset}'s {convs} convs (depthwise left out) alone at its training shape (batch {batch}, "
          f"{size}x{size}), forward + backward, summed over the network (medians of {args.runs}, settings in turn)")
    print(f"{'conv setting':<44}{'ms':>8}{'fastest':>9}")
    for name in CONV_SETTINGS:
        print(f"{name:<44}{totals[name]:>8.1f}{fastest[name]:>9}", flush=True)


def trained_step(mode: str, config: TrainConfig):
    """One bare training step of ``train``'s loop (no data loading) on the shipped model's weights, in ``mode``:
    ``step(images, targets)``. Plain and fast start from the same weights and take the same batches."""
    settings = training_settings(mode)
    amp_dtype = AMP_DTYPES[settings["amp"]]
    model = load_checkpoint_model(SHIPPED).train()
    prepare_for_training(model, settings["channels_last"], amp_dtype, settings["single_cls_pass"])
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, fused=True)
    ema = ExpMomentumEMA(model)
    autocast = torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def step(images: torch.Tensor, targets: list[dict]) -> None:
        with autocast:
            losses = model.loss(normalize(images), targets)
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    return step


def trained_steps_table(args, data: Path) -> None:
    """Bare steps from the shipped weights, plain and fast, with and without the Dice logit floor, interleaved."""
    preset, size, _, batch, _ = CASES[0]
    config = TrainConfig(preset=preset, data=str(data), image_size=size, epochs=20, batch_size=batch, lr=0.002,
                         mosaic=False, mixup=False, stage2_epochs=2).resolve()
    dataset = AugmentedDataset(sprites_split(data, "train"), build_pipeline(config), seed=0)
    batches = [collate([dataset[i * batch + j] for j in range(batch)]) for i in range(max(2, args.train_iters // 2))]
    floor = fast_losses.DICE_LOGIT_FLOOR
    cases = {(mode, floored): trained_step(mode, config) for mode in ("plain", "fast") for floored in (False, True)}
    times = {case: [] for case in cases}
    for rnd in range(args.train_rounds + 1):  # round 0 warms up
        for images, targets in batches:
            for (mode, floored), step in cases.items():
                fast_losses.DICE_LOGIT_FLOOR = floor if floored else float("-inf")
                try:
                    start = time.perf_counter()
                    step(images, targets)
                    spent = time.perf_counter() - start
                finally:
                    fast_losses.DICE_LOGIT_FLOOR = floor
                if rnd:
                    times[(mode, floored)].append(1000 * spent)
    print(f"\n# bare training steps from the shipped weights ({SHIPPED}): {preset}, {size}x{size}, batch {batch}, "
          f"ms (median of {len(times[('plain', True)])}, the four interleaved)")
    print(f"{'mode':<8}{'no floor':>10}{'Dice floor':>12}{'saved':>8}")
    for mode in ("plain", "fast"):
        off, on = (statistics.median(times[(mode, floored)]) for floored in (False, True))
        print(f"{mode:<8}{off:>10.1f}{on:>12.1f}{1 - on / off:>8.0%}", flush=True)
    plain, fast = (statistics.median(times[(mode, True)]) for mode in ("plain", "fast"))
    print(f"plain / fast with the floor: {plain / fast:.2f}")


def pipeline_seconds(dataset, size: int, stage: int, samples: int) -> float:
    """Median seconds per sample of a training pipeline (the mosaic/mixup caches filled first)."""
    pipeline = build_train_pipeline(size, stage=stage, recipe="tiny")
    rng = np.random.default_rng(0)
    items = [dataset[i % len(dataset)] for i in range(samples + 8)]
    for item in items[:8]:
        pipeline(*item, rng)
    times = []
    for item in items[8:]:
        start = time.perf_counter()
        pipeline(*item, rng)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe(what: str, preset: str, mode: str, data: str) -> None:
    """The ``--probe`` child: print the peak MiB of one predict or of 3 training iterations (``peak_mib``)."""
    _, size, image_shape, batch, _ = next(case for case in CASES if case[0] == preset)
    if what == "predict":
        image = sample_image(image_shape)
        model = busy_model(preset, canvas_input(image, size))
        net = model if mode == "plain" else optimize_for_inference(model, "fast")
        net.predict(image)  # warm-up: one-off allocations are not the call's
        print(peak_mib(lambda: net.predict(image)))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_speed_probe_") as tmp:
            settings = training_settings(mode)
            print(peak_mib(lambda: iteration_seconds(preset, size, batch, settings, 0, 0, Path(data), Path(tmp))))


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:
        return probe(*sys.argv[2:6])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per forward/predict median (default 7)")
    parser.add_argument("--train-iters", type=int, default=12,
                        help="timed training iterations per mode (0: skip training)")
    parser.add_argument("--train-rounds", type=int, default=3,
                        help="rounds of the bare training steps table of --pieces (default 3)")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers in the training rows (default 0: on a 2-core machine a worker "
                             "process competes with the training threads and slows both modes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", default=None, help="only the presets whose name contains this")
    parser.add_argument("--pieces", action="store_true", help="also time each speed-up on its own")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--whole-run", action="store_true",
                        help="only train the shipped recipe start to finish, plain and fast in turn (40-46 min)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    low = low_precision_dtype(torch.device("cpu"))
    print(f"# {cpu_name()}, {os.cpu_count()} logical CPUs, load average {load:.1f} at start | Python "
          f"{platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads | fast = "
          f"{'bf16' if low else 'fp32'} autocast + folded BN + one cls pass + channels-last | medians of {args.runs}")
    print(f"# {' '.join(['python'] + sys.argv)}")
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        data = sprites_root(Path(tmp))
        if args.whole_run:
            return whole_runs_table(data, Path(tmp))
        main_table(args, data, Path(tmp))
        if args.pieces:
            pieces_table(args, data, Path(tmp))


if __name__ == "__main__":
    main()
