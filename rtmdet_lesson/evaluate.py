"""COCO evaluation with pycocotools: box and mask AP of a model on a COCO-format dataset (chapter 08).

Results are COCO result dicts (``Instances.to_coco``): category ids mapped back from the model's contiguous
labels, masks as RLE with str counts, so they can be written to JSON as they are.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm.auto import tqdm

from rtmdet_lesson.postprocess import InferenceConfig
from rtmdet_lesson.predict import predict

# The 12 numbers COCOeval.summarize prints, in its order. -1 means "no ground truth in that range".
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """``coco_gt.loadRes`` on a copy of ``results`` (it mutates them); an empty list gives an empty result set.

    The copy is shallow per result: loadRes and COCOeval only set top-level keys (area, id, iscrowd, the RLE they
    decode to), never change the lists and dicts inside, so a deep copy (a tenth of an evaluation) is not needed.
    """
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes([dict(result) for result in results])
    coco_dt = COCO()  # loadRes refuses an empty list: build an empty result set by hand
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                       "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def evaluate_results(
    coco_gt: COCO,
    results: list[dict],
    iou_types: tuple[str, ...] = ("bbox", "segm"),
    image_ids: list[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO metrics of result dicts against ground truth: ``{"bbox_AP": ..., "segm_AP": ..., ...}`` (fractions).

    Every ``iou_type`` gives the 12 ``STAT_NAMES`` prefixed with it (``bbox_AP50``, ``segm_ARl``...).
    The images evaluated are ``image_ids`` (default: all of ``coco_gt``); one without detections counts as
    all misses. ``verbose`` lets pycocotools print its usual tables. Chapter 08 uses it.
    """
    if not coco_gt.dataset.get("annotations"):
        raise ValueError("the ground truth has no annotations, so AP is undefined (COCOeval would report -1); "
                         "evaluate on an annotated split")
    if "segm" in iou_types and any("segmentation" not in r for r in results):
        raise ValueError("segm evaluation needs a 'segmentation' in every result; use iou_types=('bbox',) for boxes.")
    coco_dt = _load_results(coco_gt, results)
    metrics = {}
    for iou_type in iou_types:
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = sorted(coco_gt.getImgIds() if image_ids is None else image_ids)
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics.update({f"{iou_type}_{name}": float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)})
    return metrics


def predict_dataset(
    model,
    dataset,
    config: str | InferenceConfig = "eval",
    device=None,
    batch_size: int = 8,
    progress: bool = True,
    indices: list[int] | None = None,
    canvas_size: int | tuple[int, int] | None = None,
) -> list[dict]:
    """Run ``predict`` over the images of a ``CocoInstanceDataset`` (all, or ``indices``); return COCO results."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    results = []
    indices = list(range(len(dataset))) if indices is None else list(indices)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    for batch in tqdm(batches, desc="predict") if progress else batches:  # tqdm honours TQDM_DISABLE
        items = [dataset[i] for i in batch]
        instances = predict(model, [image for image, _ in items], config=config, canvas_size=canvas_size,
                            device=device, batch_size=batch_size)
        for (_, target), found in zip(items, instances, strict=True):
            results += found.to_coco(target["image_id"], dataset.label_to_category_id)
    return results


def evaluate_coco(
    model,
    dataset,
    config: str | InferenceConfig = "eval",
    device=None,
    batch_size: int = 8,
    results_file: str | Path | None = None,
    progress: bool = True,
    indices: list[int] | None = None,
    canvas_size: int | tuple[int, int] | None = None,
) -> dict[str, float]:
    """Box (and, for Ins models, mask) COCO AP of ``model`` on ``dataset``. Chapter 08.

    Returns ``bbox_AP``, ``segm_AP`` (AP@[.5:.95] as fractions) and the other COCO stats (``STAT_NAMES``)
    for each type; a detection-only model gives only the ``bbox_*`` entries. ``results_file`` also writes
    the COCO result JSON (RLE masks) there. ``indices`` evaluates only those images of the dataset;
    ``canvas_size`` is passed to ``predict`` (default: the model's).
    """
    results = predict_dataset(model, dataset, config, device, batch_size, progress, indices, canvas_size)
    if results_file is not None:
        Path(results_file).parent.mkdir(parents=True, exist_ok=True)
        Path(results_file).write_text(json.dumps(results))
    iou_types = ("bbox", "segm") if getattr(model, "with_mask", True) else ("bbox",)
    image_ids = None if indices is None else [dataset.ids[i] for i in indices]
    return evaluate_results(dataset.coco, results, iou_types, image_ids)


def evaluate_model(model, dataset, device=None, batch_size: int = 8, config: str | InferenceConfig = "eval",
                   progress: bool = False) -> dict[str, float]:
    """The metrics of ``model`` on ``dataset``: COCO AP (``evaluate_coco``) for RTMDet and RTMDet-Ins, DOTA mAP
    (``rotated.metric.evaluate_rotated``, chapter 10) for RTMDet-R. What training and ``evaluate`` report."""
    from rtmdet_lesson.rotated.model import RTMDetR

    if isinstance(model, RTMDetR):
        from rtmdet_lesson.rotated.metric import evaluate_rotated

        return evaluate_rotated(model, dataset, device=device, batch_size=batch_size, progress=progress)
    return evaluate_coco(model, dataset, config=config, device=device, batch_size=batch_size, progress=progress)


def format_metrics(metrics: dict[str, float]) -> str:
    """A readable table: one row per COCO stat, one column per type (bbox, segm), in percent."""
    types = [t for t in ("bbox", "segm") if f"{t}_AP" in metrics]
    lines = [f"{'metric':<8}" + "".join(f"{t:>8}" for t in types)]
    for name in STAT_NAMES:
        lines.append(f"{name:<8}" + "".join(f"{100 * metrics[f'{t}_{name}']:>8.1f}" for t in types))
    return "\n".join(lines)
