"""The ``predict`` and ``evaluate`` sub-commands of ``python -m rtmdet_lesson`` (argument parsing is in __main__).

    python -m rtmdet_lesson predict IMAGE_OR_FOLDER... --checkpoint CKPT [--out DIR] [--score-thr X] [--overwrite]
    python -m rtmdet_lesson evaluate --checkpoint CKPT (--data DIR | --images DIR --annotations FILE) [--json]

Both take ``--speed plain|exact|fast|compile`` (default ``exact``: the same answers, faster; chapter 09), and
``--backend onnxruntime`` to run a ``.onnx`` file written by ``python -m rtmdet_lesson export`` instead
(``deploy/``; the same post-processing).
A rotated checkpoint (RTMDet-R, chapter 10) predicts rotated boxes and evaluates on DOTA-format data (``--data DIR``
with ``DIR/val/images`` + ``DIR/val/annfiles``, or ``--images DIR --annotations ANNFILES_DIR``) with DOTA's mAP;
it always runs the plain torch path (the speed paths and the ONNX export are built for the axis-aligned heads).

Chapter 08 builds what they call (``predict``, ``evaluate_coco``, ``draw_instances``); these are thin wrappers
for people who never open a notebook.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
from tqdm.auto import tqdm

from rtmdet_lesson.checkpoint import category_ids, load_checkpoint, model_from_checkpoint
from rtmdet_lesson.data.coco import CocoInstanceDataset, sprites_split
from rtmdet_lesson.evaluate import STAT_NAMES, evaluate_coco
from rtmdet_lesson.fast import optimize_for_inference
from rtmdet_lesson.figures.instances import draw_instances
from rtmdet_lesson.image_files import images_in_folder
from rtmdet_lesson.predict import predict, to_rgb_tensor
from rtmdet_lesson.runtime import pick_device


def _load(path, device, speed: str = "exact", backend: str = "torch"):
    """The checkpoint's model on ``device`` behind the ``speed`` inference path, and its category-id map.
    RTMDet-R models come back as they are (see the module docstring)."""
    from rtmdet_lesson.rotated.model import RTMDetR

    if backend == "onnxruntime":  # an exported .onnx file: the network in ONNX Runtime, the same post-processing
        from rtmdet_lesson.deploy.ort_model import load_onnx_model

        model = load_onnx_model(path, device)
        return model, model.label_to_category_id
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, pick_device(device))
    if not isinstance(model, RTMDetR):
        model = optimize_for_inference(model, speed)
    return model, category_ids(checkpoint)


def _is_rotated(model) -> bool:
    from rtmdet_lesson.rotated.model import RTMDetR

    return isinstance(model, RTMDetR)


def _predict_rotated_one(model, image, path: Path, drawing: Path, score_thr, image_id: int, label_to_category_id):
    """Rotated boxes on one image: draw them to ``drawing`` and return DOTA-like result dicts."""
    from rtmdet_lesson.figures.rotated import draw_rotated
    from rtmdet_lesson.rotated.geometry import rbox_to_corners

    (found,) = model.predict(image, score_thr=score_thr)
    fig = draw_rotated(image, found.rboxes, found.labels, found.scores, model.class_names,
                       title=f"{path.name}: {len(found)} rotated boxes")
    fig.savefig(drawing, dpi=100, bbox_inches="tight")
    plt.close(fig)
    corners = rbox_to_corners(found.rboxes.double()).reshape(-1, 8)  # (K, 8) x1 y1 ... x4 y4
    names = model.class_names or []
    return [{"image_id": image_id, "file_name": str(path), "category_id": label_to_category_id[int(label)],
             "class_name": names[int(label)] if names else None, "score": round(float(score), 5),
             "rbox": [round(float(v), 3) for v in rbox], "poly": [round(float(v), 2) for v in poly]}
            for rbox, poly, label, score in zip(found.rboxes, corners, found.labels, found.scores, strict=True)]


def expand_inputs(paths: list[str]) -> list[Path]:
    """The image files named on the command line, each folder replaced by the images inside it (sorted)."""
    files = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist; check the path")
        if path.is_dir():
            found = images_in_folder(path)
            if not found:
                raise FileNotFoundError(f"the folder {str(path)!r} holds no image files")
            files += found
        else:
            files.append(path)
    return files


def output_names(inputs: list[Path], out: Path) -> list[Path]:
    """One drawing per input, ``OUT/<stem>.pred.png``, never an input's path and never another output's.

    Two inputs with the same stem (``a/x.png``, ``b/x.jpg``) get ``x.pred.png`` and ``x-2.pred.png``.
    """
    taken = {path.resolve() for path in inputs} | {(out / "results.json").resolve()}
    names = []
    for path in inputs:
        candidate, n = out / f"{path.stem}.pred.png", 1
        while candidate.resolve() in taken:
            n += 1
            candidate = out / f"{path.stem}-{n}.pred.png"
        taken.add(candidate.resolve())
        names.append(candidate)
    return names


def predict_main(args) -> int:
    """Write ``OUT/<image stem>.pred.png`` (instances drawn) per image and ``OUT/results.json`` (COCO results).

    Folders among the inputs stand for the images inside them. ``results.json`` holds one dict per instance
    with ``file_name`` added; ``image_id`` is the image's position in the input list (from 1). Category ids are
    the training dataset's (the checkpoint's ``label_to_category_id``; label + 1 for files that predate it).
    Existing files are never replaced without ``--overwrite``, and inputs never. An image that cannot be read is
    reported and skipped; the others' results are still written, and the exit status is then 1.
    """
    inputs = expand_inputs(args.images)
    out = Path(args.out)
    drawings = output_names(inputs, out)
    existing = [p for p in [*drawings, out / "results.json"] if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]} already exists (and {len(existing) - 1} more output file(s)); "
                              "choose another --out, or pass --overwrite to replace earlier predictions")
    model, label_to_category_id = _load(args.checkpoint, args.device, args.speed, args.backend)
    out.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    for image_id, (path, drawing) in enumerate(zip(tqdm(inputs, desc="predict"), drawings, strict=True), start=1):
        try:
            image = to_rgb_tensor(path)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed.append(path)
            continue
        if _is_rotated(model):
            results += _predict_rotated_one(model, image, path, drawing, args.score_thr, image_id,
                                            label_to_category_id)
            continue
        (found,) = predict(model, image, config=args.config, score_thr=args.score_thr)
        fig = draw_instances(image, found, model.class_names, title=f"{path.name}: {len(found)} instances")
        fig.savefig(drawing, dpi=100, bbox_inches="tight")
        plt.close(fig)
        results += [dict(r, file_name=str(path)) for r in found.to_coco(image_id, label_to_category_id)]
    (out / "results.json").write_text(json.dumps(results))
    done = len(inputs) - len(failed)
    print(f"{len(results)} instances in {done} images -> {out}/ (one .pred.png per image, results.json)")
    if failed:
        print(f"error: {len(failed)} of {len(inputs)} images could not be read: "
              + ", ".join(map(str, failed)), file=sys.stderr)
        return 1
    return 0


def _dataset(args, rotated: bool = False):
    if rotated:
        from rtmdet_lesson.rotated.dota import DotaDataset, dota_split

        if args.data is None and args.annotations is None:
            raise ValueError("evaluate --images needs --annotations DIR (the folder of DOTA .txt files)")
        return dota_split(args.data, "val") if args.data is not None else DotaDataset(args.images, args.annotations)
    if args.data is None and args.annotations is None:
        raise ValueError("evaluate --images needs --annotations FILE (the COCO instances JSON)")
    if args.data is not None:
        return sprites_split(args.data, "val")
    return CocoInstanceDataset(args.images, args.annotations)


def format_metrics(metrics: dict[str, float]) -> str:
    """A readable table: one row per COCO stat, one column per type (bbox, segm), in percent."""
    types = [t for t in ("bbox", "segm") if f"{t}_AP" in metrics]
    lines = [f"{'metric':<8}" + "".join(f"{t:>8}" for t in types)]
    for name in STAT_NAMES:
        lines.append(f"{name:<8}" + "".join(f"{100 * metrics[f'{t}_{name}']:>8.1f}" for t in types))
    return "\n".join(lines)


def format_rotated_metrics(metrics: dict[str, float], class_names: list[str]) -> str:
    """A readable table of DOTA metrics: mAP50, AP75, AP@[.5:.95], then AP50 per class, in percent."""
    rows = [("mAP50", metrics["rbox_mAP50"]), ("AP75", metrics["rbox_AP75"]), ("AP", metrics["rbox_AP"])]
    rows += [(f"AP50 {name}", metrics[f"rbox_AP50_{name}"]) for name in class_names]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}} {100 * value:>6.1f}" for name, value in rows)


def evaluate_main(args) -> int:
    """COCO bbox/segm AP of a checkpoint on a dataset; with ``--json`` the last line is one JSON object."""
    model, _ = _load(args.checkpoint, args.device, args.speed, args.backend)
    dataset = _dataset(args, rotated=_is_rotated(model))
    if model.num_classes != len(dataset.class_names):
        raise ValueError(
            f"the checkpoint has {model.num_classes} classes but the dataset has "
            f"{len(dataset.class_names)}; evaluate on the dataset the model was trained for"
        )
    if model.class_names and list(model.class_names) != list(dataset.class_names):
        print(f"warning: class names differ: model {model.class_names}, dataset {dataset.class_names}",
              file=sys.stderr)
    if _is_rotated(model):
        from rtmdet_lesson.rotated.metric import evaluate_rotated

        metrics = evaluate_rotated(model, dataset)
        print(f"{args.checkpoint} on {len(dataset)} images (the reference's test settings); DOTA AP in percent "
              "(11-point VOC07, difficult objects ignored):")
        print(format_rotated_metrics(metrics, model.class_names or dataset.class_names))
    else:
        metrics = evaluate_coco(model, dataset, config=args.config)
        path = "onnxruntime" if args.backend == "onnxruntime" else f"{args.speed} path"
        print(f"{args.checkpoint} on {len(dataset)} images ({args.config} settings, {path}); AP in percent:")
        print(format_metrics(metrics))
    if args.json:
        print(json.dumps(metrics))
    return 0
