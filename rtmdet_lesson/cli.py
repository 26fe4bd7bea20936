"""The command line: ``python -m rtmdet_lesson`` (or ``rtmdet-lesson``) with one sub-command per job.

    python -m rtmdet_lesson data sprites [--rotated] [--out DIR] [--seed S] [--train N] [--val N]
    python -m rtmdet_lesson summary PRESET [--num-classes C]
    python -m rtmdet_lesson train [PRESET] [--data DIR | --images DIR --annotations FILE] [--set KEY=VALUE ...]
    python -m rtmdet_lesson predict IMAGE_OR_FOLDER... --checkpoint CKPT [--out DIR] [--score-thr X]
    python -m rtmdet_lesson evaluate --checkpoint CKPT (--data DIR | --images DIR --annotations FILE) [--json]
    python -m rtmdet_lesson export --checkpoint CKPT --out model.onnx

This module parses the arguments and calls the package (each sub-command's work lives in the module and the
chapter that teach it: ``data`` 00, ``summary`` 03, ``train`` 07, ``predict``/``evaluate`` 08, ``export``:
``deploy/``). A user's mistake (a bad path, file, dataset or setting: ``ValueError`` and ``OSError`` with our
messages; a missing optional package) becomes one line and exit status 2. Any other exception is a bug and
keeps its traceback; ``--debug`` (or ``RTMDET_LESSON_DEBUG=1``) shows the traceback of user errors too.

``train`` has flags for the settings people change; every other ``TrainConfig`` setting is ``--set KEY=VALUE``,
read against the field's type. ``train PRESET`` starts from the preset's recipe (``presets.RECIPES``), and
``train PRESET --list-settings`` prints every setting with its value and its documentation.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import os
import re
import sys
import time
import typing
from dataclasses import asdict, fields
from pathlib import Path

from rtmdet_lesson.presets import PRESETS, ROTATED_PRESETS

USER_ERRORS = (ValueError, OSError)  # what our checks raise for bad input; OSError covers missing files, full disks
DEBUG_ENV = "RTMDET_LESSON_DEBUG"
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "augment", "amp", "device", "workers", "seed")  # also in TrainConfig


def build_parser() -> argparse.ArgumentParser:
    from rtmdet_lesson.fast import SPEEDS

    parser = argparse.ArgumentParser(prog="rtmdet-lesson", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of every error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    sprites = sub.add_parser("data", help="generate a dataset").add_subparsers(dest="dataset", required=True)
    sprites = sprites.add_parser("sprites", help="the pixel sprites (COCO format, or DOTA with --rotated)")
    sprites.add_argument("--rotated", action="store_true",
                         help="sprites turned at any angle with oriented boxes, in DOTA's text format (chapter 10)")
    sprites.add_argument("--out", default=None,
                         help="output folder (default: data/sprites, with --rotated data/sprites-rotated)")
    sprites.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sprites.add_argument("--train", type=int, default=1000, help="number of training images (default: 1000)")
    sprites.add_argument("--val", type=int, default=200, help="number of validation images (default: 200)")

    summary = sub.add_parser("summary", help="parameters (and FLOPs at 640) per module of a preset")
    summary.add_argument("preset", help="e.g. rtmdet-ins-tiny, rtmdet-s, course-sprites")
    summary.add_argument("--num-classes", type=int, default=None, help="default: the preset's")

    add_train_arguments(sub.add_parser(
        "train", help="train a preset on the sprites or any COCO-format dataset (DOTA format for rotated presets)",
        description="Train PRESET with its recipe (presets.RECIPES). Every setting is a field of "
                    "rtmdet_lesson.train_config.TrainConfig, documented there; the flags below set the common ones, "
                    "--set KEY=VALUE any of them, and --list-settings prints them all with their values."))

    predict = sub.add_parser("predict", help="segment image files with a trained checkpoint")
    predict.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or folders of them")
    predict.add_argument("--out", default="predictions",
                         help="folder for the drawings (NAME.pred.png) and results.json (default: predictions)")
    predict.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier predict")
    predict.add_argument("--score-thr", type=float, default=None, help="override the preset's score threshold")

    evaluate = sub.add_parser("evaluate", help="COCO bbox and segm AP of a checkpoint on a COCO-format dataset "
                              "(DOTA mAP for rotated checkpoints on DOTA-format data)")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a dataset folder as `data sprites` writes it (uses its val split)")
    source.add_argument("--images", help="image folder of a COCO-format dataset (with --annotations)")
    evaluate.add_argument("--annotations", help="COCO instances JSON (with --images); for a rotated checkpoint the "
                          "folder of DOTA .txt files")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object last")
    for command, config in ((predict, "deploy"), (evaluate, "eval")):
        command.add_argument("--checkpoint", required=True, help="a checkpoint written by this package")
        command.add_argument("--config", default=config, choices=["eval", "deploy"],
                             help=f"post-processing preset (default: {config})")
        command.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
        command.add_argument("--speed", default="exact", choices=list(SPEEDS),
                             help="inference path (chapter 09): plain, exact (default: same answers, faster), fast "
                                  "(+ bf16 where the hardware has it) or compile (+ torch.compile)")
        command.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                             help="torch (default) runs a .pth checkpoint; onnxruntime runs a .onnx file written by "
                                  "`export` (--speed does not apply; needs pip install -e .[deploy])")

    from rtmdet_lesson.deploy.export import add_export_arguments

    add_export_arguments(sub.add_parser("export", help="export a checkpoint's network to ONNX (the deploy extra)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return run(args)
    from rtmdet_lesson.deploy.extra import MissingExtra
    from rtmdet_lesson.train import TrainingDiverged

    try:
        return run(args)
    except (*USER_ERRORS, MissingExtra, TrainingDiverged) as error:
        print(f"rtmdet-lesson {args.command}: error: {_message(error)}", file=sys.stderr)
        return 1 if isinstance(error, TrainingDiverged) else 2


def _message(error: BaseException) -> str:
    """An error as one line: the operating system's words and the file for its errors, else our message."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return " ".join(str(error).split()) or type(error).__name__


def run(args: argparse.Namespace) -> int:
    """Run the parsed sub-command; its return value is the exit status."""
    if args.command == "export":
        from rtmdet_lesson.deploy.export import main as export_main

        return export_main(args) or 0
    commands = {"data": data_main, "summary": summary_main, "train": train_main, "predict": predict_main,
                "evaluate": evaluate_main}
    return commands[args.command](args) or 0


def data_main(args) -> int:
    """``data sprites [--rotated]``: write the sprites dataset and say what was written."""
    from rtmdet_lesson.data import rotated_sprites, sprites

    start = time.perf_counter()
    generator = rotated_sprites if args.rotated else sprites
    out = Path(args.out or ("data/sprites-rotated" if args.rotated else "data/sprites"))
    stats = generator.write_splits(out, args.seed, {"train": args.train, "val": args.val})
    what, stale = ("objects", "files") if args.rotated else ("instances", "images")
    parts = [f"{s}: {n} images, {k} {what}" + (f" ({r} stale {stale} removed)" if r else "")
             for s, (n, k, r) in stats.items()]
    print(f"{'rotated ' if args.rotated else ''}sprites seed {args.seed} -> {out}: " + "; ".join(parts)
          + f" [{time.perf_counter() - start:.1f} s]")
    return 0


def summary_main(args) -> int:
    """``summary PRESET``: parameters and conv FLOPs per part (``summary.summarize``, chapter 03)."""
    import torch

    from rtmdet_lesson.presets import build_model
    from rtmdet_lesson.summary import format_table, summarize

    with torch.device("meta"):  # counting needs shapes only, so even x builds instantly
        model = build_model(args.preset, args.num_classes)
    kind = "RTMDet-Ins" if model.with_mask else "RTMDet-R" if args.preset in ROTATED_PRESETS else "RTMDet"
    print(f"{args.preset}: {model.num_classes} classes, {kind}")
    print(format_table(summarize(model)))
    print("FLOPs = conv multiply-accumulates for one image (BN, activations, post-processing not counted)")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# train


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``train`` sub-command's arguments: data, output, resume, the settings people change, and ``--set``."""
    parser.add_argument("preset", nargs="?", default=None, choices=[*PRESETS, *ROTATED_PRESETS], metavar="PRESET",
                        help="model preset and its recipe (default: course-sprites, or the resumed run's)")
    parser.add_argument("--data", default=None, help="a folder with train/ and val/ as `data sprites` writes it "
                        "(default: data/sprites)")
    parser.add_argument("--images", default=None, help="image folder of any COCO-format training set")
    parser.add_argument("--annotations", default=None, help="its COCO JSON (rotated presets: DOTA .txt folder); "
                        "a val split: --set val_images=DIR --set val_annotations=FILE")
    parser.add_argument("--out", default=None, help="output folder (default: runs/PRESET)")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue a run from its last.pth, with its settings (any given here override them)")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier run's files in --out first")
    parser.add_argument("--max-iters", type=int, default=None,
                        help="stop after this many iterations in total (writes last.pth to resume from)")
    parser.add_argument("--epochs", type=int, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, help="images per process and step")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (default: scaled to the batch, see scaled_lr)")
    parser.add_argument("--augment", choices=["reference", "flip", "none"],
                        help="reference (the recipe's two stages), flip (letterbox + flip) or none (letterbox)")
    parser.add_argument("--amp", choices=["off", "fp16", "bf16"], help="mixed precision (fp16: CUDA only)")
    parser.add_argument("--fast", action="store_true", help="the device's fast settings (chapter 09): "
                        "channels-last and its fast mixed precision; settings given as well win")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes per training process")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other TrainConfig setting, e.g. --set image_size=256 --set mosaic=false "
                             "(repeatable; --list-settings shows them all)")
    parser.add_argument("--list-settings", action="store_true",
                        help="print every setting of the run with its documentation, and exit")
    return parser


def setting_docs() -> dict[str, str]:
    """Each ``TrainConfig`` field's comment in its source: the one place a setting is documented."""
    from rtmdet_lesson.train_config import TrainConfig

    docs, last = {}, None
    for line in inspect.getsource(TrainConfig).splitlines():
        field = re.match(r" {4}(\w+): [^=]+=.*?#\s*(.*)$", line)
        more = re.match(r" {4}#\s*(\(.*)$", line)  # a comment line in parentheses continues the field above
        if field:
            docs[last := field[1]] = field[2]
        elif more and last:
            docs[last] += " " + more[1]
    return docs


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` as a ``TrainConfig`` field name and a value of its type (``none`` for optional ones)."""
    from rtmdet_lesson.train_config import TrainConfig

    key, equals, value = text.partition("=")
    key = key.strip().replace("-", "_")
    hints = typing.get_type_hints(TrainConfig)
    if not equals or key not in hints:
        close = difflib.get_close_matches(key, hints, n=3)
        reason = f"unknown setting {key!r}" if equals else f"--set {text!r} is not KEY=VALUE"
        raise ValueError(f"{reason}{'; did you mean ' + ' or '.join(close) if close and equals else ''}; "
                         "`train --list-settings` lists them all")
    kinds = typing.get_args(hints[key]) or (hints[key],)
    kind = next(k for k in kinds if k is not type(None))
    if type(None) in kinds and value.strip().lower() in ("none", "null"):
        return key, None
    if kind is bool:
        flags = {**dict.fromkeys(("true", "yes", "on", "1"), True), **dict.fromkeys(("false", "no", "off", "0"), False)}
        if value.strip().lower() in flags:
            return key, flags[value.strip().lower()]
    else:
        try:
            return key, kind(value)
        except ValueError:
            pass
    optional = " or none" if type(None) in kinds else ""
    raise ValueError(f"--set {key}={value}: expected {'true or false' if kind is bool else kind.__name__}{optional}")


def config_from_args(args: argparse.Namespace, base=None):
    """A ``TrainConfig`` from parsed ``train`` arguments: the resumed run's settings (``base``) or else the
    preset's recipe, under ``--fast``'s, under what was given (``--set``, then the flags)."""
    from rtmdet_lesson.runtime import pick_device
    from rtmdet_lesson.train import fast_training_settings
    from rtmdet_lesson.train_config import TrainConfig

    if args.data and (args.images or args.annotations):
        raise ValueError("give either --data DIR or --images DIR --annotations FILE, not both")
    given = dict(parse_setting(text) for text in args.set)
    given.update({name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None})
    if args.images or args.annotations:
        given.update(data=None, train_images=args.images, train_annotations=args.annotations)
    elif args.data:
        given.update(data=args.data, train_images=None, train_annotations=None)
    if args.images or args.annotations or args.data:
        given = {"val_images": None, "val_annotations": None, **given}
    if args.fast:
        given = {**fast_training_settings(pick_device(given.get("device", base and base.device))), **given}
    if args.out:
        given["out"] = args.out
    if base is not None:
        return TrainConfig(**{**asdict(base), "preset": args.preset or base.preset, **given})
    preset = args.preset or "course-sprites"
    return TrainConfig.for_preset(preset, **{"out": f"runs/{preset}", **given})


def train_main(args: argparse.Namespace) -> int:
    """``train``: build the config, then run ``train.train`` with a log on the terminal (or list the settings)."""
    import logging

    from tqdm.contrib.logging import logging_redirect_tqdm

    from rtmdet_lesson import train
    from rtmdet_lesson.train_state import saved_config

    config = config_from_args(args, saved_config(args.resume) if args.resume else None)
    if args.resume and not args.out:  # continue in the checkpoint's folder, wherever the run was moved to
        config.out = str(Path(args.resume).parent)
    if args.list_settings:
        docs, values = setting_docs(), {f.name: repr(getattr(config, f.name)) for f in fields(config)}
        width = max(map(len, values.values()))
        for name, value in values.items():
            print(f"{name:<18} {value:<{width}}  {docs.get(name, '')}")
        return 0
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    train.log.addHandler(handler)
    train.log.setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm(loggers=[train.log]):
            result = train.train(config, resume=args.resume, max_iters=args.max_iters, overwrite=args.overwrite)
    finally:
        train.log.removeHandler(handler)
    return 128 + result["signal"] if result["signal"] else 0  # the shell's convention for a signalled stop


# ---------------------------------------------------------------------------------------------------------------
# predict and evaluate (chapter 08 builds what they call: predict, evaluate_coco, draw_instances)


def _load(args):
    """The checkpoint's model behind the ``--speed`` inference path (RTMDet-R as it is: the speed paths are built
    for the axis-aligned heads), or the ONNX model with ``--backend onnxruntime``; and its category-id map."""
    from rtmdet_lesson.checkpoint import category_ids, load_checkpoint, model_from_checkpoint
    from rtmdet_lesson.fast import optimize_for_inference
    from rtmdet_lesson.rotated.model import RTMDetR
    from rtmdet_lesson.runtime import pick_device

    if args.backend == "onnxruntime":  # an exported .onnx file: the network in ONNX Runtime, the same decoding
        from rtmdet_lesson.deploy.ort_model import load_onnx_model

        model = load_onnx_model(args.checkpoint, args.device)
        return model, model.label_to_category_id
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, pick_device(args.device))
    if not isinstance(model, RTMDetR):
        model = optimize_for_inference(model, args.speed)
    return model, category_ids(checkpoint)


def predict_main(args) -> int:
    """Write ``OUT/<image stem>.pred.png`` (instances drawn) per image and ``OUT/results.json`` (COCO results,
    with ``file_name`` added; ``image_id`` is the image's position in the input list, from 1).

    Category ids are the training dataset's (the checkpoint's ``label_to_category_id``). Existing files are never
    replaced without ``--overwrite``, and inputs never. An image that cannot be read is reported and skipped; the
    others' results are still written, and the exit status is then 1.
    """
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    from rtmdet_lesson.image_files import expand_inputs, output_names
    from rtmdet_lesson.predict import to_rgb_tensor

    inputs = expand_inputs(args.images)
    out = Path(args.out)
    drawings = output_names(inputs, out)
    existing = [p for p in [*drawings, out / "results.json"] if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]} already exists (and {len(existing) - 1} more output file(s)); "
                              "choose another --out, or pass --overwrite to replace earlier predictions")
    model, label_to_category_id = _load(args)
    out.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    for image_id, (path, drawing) in enumerate(zip(tqdm(inputs, desc="predict"), drawings, strict=True), start=1):
        try:
            image = to_rgb_tensor(path)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed.append(path)
            continue
        fig, found = _predict_one(model, image, path.name, args, image_id, label_to_category_id)
        fig.savefig(drawing, dpi=100, bbox_inches="tight")
        plt.close(fig)
        results += [dict(r, file_name=str(path)) for r in found]
    (out / "results.json").write_text(json.dumps(results))
    print(f"{len(results)} instances in {len(inputs) - len(failed)} images -> {out}/ (one .pred.png per image, "
          "results.json)")
    if failed:
        print(f"error: {len(failed)} of {len(inputs)} images could not be read: " + ", ".join(map(str, failed)),
              file=sys.stderr)
        return 1
    return 0


def _predict_one(model, image, name: str, args, image_id: int, label_to_category_id: dict) -> tuple:
    """The drawing of one image's instances and their result dicts (COCO's; rotated boxes: DOTA-like ones)."""
    from rtmdet_lesson.rotated.model import RTMDetR

    if isinstance(model, RTMDetR):
        from rtmdet_lesson.figures.rotated import draw_rotated
        from rtmdet_lesson.rotated.predict import rotated_results

        (found,) = model.predict(image, score_thr=args.score_thr)
        fig = draw_rotated(image, found.rboxes, found.labels, found.scores, model.class_names,
                           title=f"{name}: {len(found)} rotated boxes")
        return fig, rotated_results(found, image_id, label_to_category_id, model.class_names)
    from rtmdet_lesson.figures.instances import draw_instances
    from rtmdet_lesson.predict import predict

    (found,) = predict(model, image, config=args.config, score_thr=args.score_thr)
    fig = draw_instances(image, found, model.class_names, title=f"{name}: {len(found)} instances")
    return fig, found.to_coco(image_id, label_to_category_id)


def evaluate_main(args) -> int:
    """COCO bbox/segm AP (DOTA mAP for RTMDet-R) of a checkpoint on a dataset; ``--json``: one JSON line last."""
    from rtmdet_lesson.evaluate import evaluate_model, format_metrics
    from rtmdet_lesson.rotated.metric import format_rotated_metrics
    from rtmdet_lesson.rotated.model import RTMDetR
    from rtmdet_lesson.train_data import data_format

    model, _ = _load(args)
    rotated = isinstance(model, RTMDetR)
    fmt = data_format(rotated)
    if args.data is None and args.annotations is None:
        raise ValueError(f"evaluate --images needs --annotations ({fmt.annotations})")
    dataset = (fmt.open_split(args.data, "val", None) if args.data is not None
               else fmt.open_files(args.images, args.annotations, None))
    if model.num_classes != len(dataset.class_names):
        raise ValueError(f"the checkpoint has {model.num_classes} classes but the dataset has "
                         f"{len(dataset.class_names)}; evaluate on the dataset the model was trained for")
    if model.class_names and list(model.class_names) != list(dataset.class_names):
        print(f"warning: class names differ: model {model.class_names}, dataset {dataset.class_names}",
              file=sys.stderr)
    metrics = evaluate_model(model, dataset, config=args.config, progress=True)
    if rotated:
        print(f"{args.checkpoint} on {len(dataset)} images (the reference's test settings); DOTA AP in percent "
              "(11-point VOC07, difficult objects ignored):")
        print(format_rotated_metrics(metrics, model.class_names or dataset.class_names))
    else:
        path = "onnxruntime" if args.backend == "onnxruntime" else f"{args.speed} path"
        print(f"{args.checkpoint} on {len(dataset)} images ({args.config} settings, {path}); AP in percent:")
        print(format_metrics(metrics))
    if args.json:
        print(json.dumps(metrics))
    return 0
