"""The ``predict`` and ``evaluate`` sub-commands of ``python -m rtmdet_lesson`` (argument parsing is in __main__).

    python -m rtmdet_lesson predict IMAGE... --checkpoint CKPT [--out DIR] [--score-thr X] [--config eval|deploy]
    python -m rtmdet_lesson evaluate --checkpoint CKPT (--data DIR | --images DIR --annotations FILE) [--json]

Both take ``--speed plain|exact|fast|compile`` (default ``exact``: the same answers, faster; chapter 09), and
``--backend onnxruntime`` to run a ``.onnx`` file written by ``python -m rtmdet_lesson export`` instead
(``deploy/``; the same post-processing).

Chapter 08 builds what they call (``predict``, ``evaluate_coco``, ``draw_instances``); these are thin wrappers
for people who never open a notebook.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
from tqdm.auto import tqdm

from rtmdet_lesson.checkpoint import load_checkpoint, model_from_checkpoint
from rtmdet_lesson.data.coco import CocoInstanceDataset, sprites_split
from rtmdet_lesson.evaluate import STAT_NAMES, evaluate_coco
from rtmdet_lesson.figures.instances import draw_instances
from rtmdet_lesson.predict import predict, to_rgb_tensor
from rtmdet_lesson.runtime import pick_device
from rtmdet_lesson.speed import optimize_for_inference


def _load(path, device, speed: str = "exact", backend: str = "torch"):
    """The checkpoint's model on ``device`` behind the ``speed`` inference path, and its category-id map."""
    if backend == "onnxruntime":  # an exported .onnx file: the network in ONNX Runtime, the same post-processing
        from rtmdet_lesson.deploy.ort_model import load_onnx_model

        try:
            model = load_onnx_model(path, device)
        except (FileNotFoundError, ValueError, ImportError) as error:
            raise SystemExit(f"error: {error}") from error
        return model, model.label_to_category_id
    try:
        checkpoint = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    model = optimize_for_inference(model_from_checkpoint(checkpoint, pick_device(device)), speed)
    label_to_category_id = checkpoint.get("label_to_category_id") or {k: k + 1 for k in range(model.num_classes)}
    return model, {int(k): int(v) for k, v in label_to_category_id.items()}


def predict_main(args) -> int:
    """Write ``OUT/<image stem>.png`` (instances drawn) per image and ``OUT/results.json`` (COCO results).

    ``results.json`` holds one dict per instance with ``file_name`` added; ``image_id`` is the image's position
    in the command line (from 1). Category ids come from the checkpoint's ``label_to_category_id`` if it has
    one, else label + 1.
    """
    model, label_to_category_id = _load(args.checkpoint, args.device, args.speed, args.backend)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for image_id, path in enumerate(tqdm(args.images, desc="predict"), start=1):
        try:
            image = to_rgb_tensor(path)
        except (FileNotFoundError, ValueError, OSError) as error:  # OSError: Pillow cannot read the file
            raise SystemExit(f"error: {path}: {error}") from error
        (found,) = predict(model, image, config=args.config, score_thr=args.score_thr)
        fig = draw_instances(image, found, model.class_names, title=f"{Path(path).name}: {len(found)} instances")
        fig.savefig(out / f"{Path(path).stem}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        results += [dict(r, file_name=str(path)) for r in found.to_coco(image_id, label_to_category_id)]
    (out / "results.json").write_text(json.dumps(results))
    print(f"{len(results)} instances in {len(args.images)} images -> {out}/ (one PNG per image, results.json)")
    return 0


def _dataset(args) -> CocoInstanceDataset:
    if args.data is None and args.annotations is None:
        raise SystemExit("error: evaluate --images needs --annotations FILE (the COCO instances JSON)")
    try:
        return sprites_split(args.data, "val") if args.data is not None else CocoInstanceDataset(args.images,
                                                                                                 args.annotations)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error


def format_metrics(metrics: dict[str, float]) -> str:
    """A readable table: one row per COCO stat, one column per type (bbox, segm), in percent."""
    types = [t for t in ("bbox", "segm") if f"{t}_AP" in metrics]
    lines = [f"{'metric':<8}" + "".join(f"{t:>8}" for t in types)]
    for name in STAT_NAMES:
        lines.append(f"{name:<8}" + "".join(f"{100 * metrics[f'{t}_{name}']:>8.1f}" for t in types))
    return "\n".join(lines)


def evaluate_main(args) -> int:
    """COCO bbox/segm AP of a checkpoint on a dataset; with ``--json`` the last line is one JSON object."""
    model, _ = _load(args.checkpoint, args.device, args.speed, args.backend)
    dataset = _dataset(args)
    if model.num_classes != len(dataset.class_names):
        raise SystemExit(
            f"evaluate: the checkpoint has {model.num_classes} classes but the dataset has "
            f"{len(dataset.class_names)}; evaluate on the dataset the model was trained for"
        )
    if model.class_names and list(model.class_names) != list(dataset.class_names):
        print(f"warning: class names differ: model {model.class_names}, dataset {dataset.class_names}",
              file=sys.stderr)
    metrics = evaluate_coco(model, dataset, config=args.config)
    path = "onnxruntime" if args.backend == "onnxruntime" else f"{args.speed} path"
    print(f"{args.checkpoint} on {len(dataset)} images ({args.config} settings, {path}); AP in percent:")
    print(format_metrics(metrics))
    if args.json:
        print(json.dumps(metrics))
    return 0
