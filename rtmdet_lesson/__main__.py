"""The command line: ``python -m rtmdet_lesson`` (or ``rtmdet-lesson``) with one sub-command per job.

Each sub-command's work lives in the module that owns it (and the chapter that teaches it: ``data`` 00,
``summary`` 03, ``train`` 07, ``predict``/``evaluate`` 08, ``export``: ``deploy/``); this file parses arguments
and turns a user's mistake (a bad path, file, dataset or setting: ``ValueError`` and ``OSError`` with our
messages; a missing optional package) into one line and exit status 2. Any other exception is a bug and keeps
its traceback; ``--debug`` (or ``RTMDET_LESSON_DEBUG=1``) shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import os
import sys

USER_ERRORS = (ValueError, OSError)  # what our checks raise for bad input; OSError covers missing files, full disks
DEBUG_ENV = "RTMDET_LESSON_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtmdet-lesson", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of every error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate a dataset")
    data_sub = data.add_subparsers(dest="dataset", required=True)
    sprites = data_sub.add_parser("sprites", help="the generated pixel-sprite dataset (COCO format, or DOTA format "
                                  "with --rotated)")
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

    from rtmdet_lesson.fast import SPEEDS
    from rtmdet_lesson.train import add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train a preset on the sprites or any COCO-format dataset"))

    predict = sub.add_parser("predict", help="segment image files with a trained checkpoint")
    predict.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or folders of them")
    predict.add_argument("--checkpoint", required=True, help="a checkpoint written by this package")
    predict.add_argument("--out", default="predictions",
                         help="folder for the drawings (NAME.pred.png) and results.json (default: predictions)")
    predict.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier predict")
    predict.add_argument("--score-thr", type=float, default=None, help="override the preset's score threshold")
    predict.add_argument("--config", default="deploy", choices=["eval", "deploy"], help="post-processing preset")
    predict.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    predict.add_argument("--speed", default="exact", choices=list(SPEEDS),
                        help="inference path (chapter 09): plain, exact (default: same answers, faster), fast "
                             "(+ bf16 where the hardware has it) or compile (+ torch.compile)")

    evaluate = sub.add_parser("evaluate", help="COCO bbox and segm AP of a checkpoint on a COCO-format dataset "
                              "(DOTA mAP for rotated checkpoints on DOTA-format data)")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint written by this package")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a dataset folder as `data sprites` writes it (uses its val split)")
    source.add_argument("--images", help="image folder of a COCO-format dataset (with --annotations)")
    evaluate.add_argument("--annotations", help="COCO instances JSON (with --images); for a rotated checkpoint the "
                          "folder of DOTA .txt files")
    evaluate.add_argument("--config", default="eval", choices=["eval", "deploy"], help="post-processing preset")
    evaluate.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    evaluate.add_argument("--speed", default="exact", choices=list(SPEEDS),
                        help="inference path (chapter 09): plain, exact (default: same answers, faster), fast "
                             "(+ bf16 where the hardware has it) or compile (+ torch.compile)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object last")
    for inference in (predict, evaluate):
        inference.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
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
    if args.command == "data":
        if args.rotated:
            from rtmdet_lesson.data.rotated_sprites import main as rotated_main

            args.out = args.out or "data/sprites-rotated"
            return rotated_main(args) or 0
        from rtmdet_lesson.data.sprites import main as sprites_main

        args.out = args.out or "data/sprites"
        return sprites_main(args) or 0
    if args.command == "summary":
        from rtmdet_lesson.summary import main as summary_main

        return summary_main(args) or 0
    if args.command == "train":
        from rtmdet_lesson.train import main as train_main

        return train_main(args) or 0
    if args.command in ("predict", "evaluate"):
        from rtmdet_lesson import cli_inference

        return getattr(cli_inference, f"{args.command}_main")(args) or 0
    if args.command == "export":
        from rtmdet_lesson.deploy.export import main as export_main

        return export_main(args) or 0
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
