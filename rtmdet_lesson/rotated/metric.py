"""DOTA's mAP for rotated boxes: per-class average precision with the VOC protocol and rotated IoU (chapter 10).

How DOTA papers count (the DOTA devkit's ``dota_evaluation_task1.py``, ``voc_eval``; mmrotate's
``DOTAMetric`` through ``eval_rbbox_map`` in ``mmrotate/evaluation/functional/mean_ap.py``):

1. Per class, the detections of all images are ranked by score. Walking down the ranking, a detection is
   matched to the ground-truth box of its image with which it has the largest rotated IoU. If that IoU reaches
   the threshold (mmrotate: ``>=``; the devkit: ``>``) and the box is not yet taken, it is a true positive and
   takes it; a box already taken makes it a false positive; below the threshold it is a false positive.
2. Difficult ground truths are ignored: a detection matched to one is neither true nor false positive, and
   they do not count among the positives to find (the devkit's ``difficult`` flags; mmrotate's
   ``bboxes_ignore``).
3. Precision and recall along the ranking give the class's AP. Both references default to the **11-point**
   interpolation of VOC 2007 (``use_07_metric=True`` in ``eval_rbbox_map`` and in the devkit's ``main``): the
   mean, over recall levels ``numpy.arange(0, 1.1, 0.1)``, of the best precision at a recall at least that
   level. (That ``arange`` holds 0.30000000000000004, so a recall of exactly 3/10 misses the 0.3 point; kept,
   since both references compute it so.) ``mode="area"`` gives VOC 2010's area under the interpolated curve.
4. mAP is the mean over the classes that have ground truth. AP@[.5:.95] is the mean of the mAPs at the IoU
   thresholds 0.50, 0.55, ..., 0.95, as ``DOTAMetric`` averages when given several thresholds.

Unlike COCO's AP, VOC counts every detection (no limit of 100 per image) and does not interpolate on a
101-point grid.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from rtmdet_lesson.rotated.iou import rotated_iou

ELEVEN_POINTS = np.arange(0.0, 1.1, 0.1)  # the references' recall levels, float quirks included
COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.5, 0.55, ..., 0.95
AP_MODES = ("11points", "area")


def average_precision(recall: np.ndarray, precision: np.ndarray, mode: str = "11points") -> float:
    """AP of one precision-recall curve (points in ranking order). Chapter 10.

    ``"11points"``: mean over the 11 recall levels of the best precision at a recall >= the level (0 if none).
    ``"area"``: area under the curve made monotone (each precision replaced by the best at any higher recall).
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if mode == "11points":
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in ELEVEN_POINTS]))
    if mode == "area":
        r = np.concatenate([[0.0], recall, [1.0]])
        p = np.concatenate([[0.0], precision, [0.0]])
        p = np.maximum.accumulate(p[::-1])[::-1]  # the best precision at this recall or beyond
        steps = np.nonzero(r[1:] != r[:-1])[0]
        return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))
    raise ValueError(f"mode must be one of {AP_MODES}, got {mode!r}")


def _match(scores: np.ndarray, ious: np.ndarray, ignore: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives (K,) of one image's detections of one class, as step 1 and 2 above.

    scores (K,), ious (K, G) against all ground truths of the class (ignored ones too), ignore (G,) bool.
    """
    tp, fp = np.zeros(len(scores)), np.zeros(len(scores))
    if ious.shape[1] == 0:
        fp[:] = 1
        return tp, fp
    best, best_gt = ious.max(axis=1), ious.argmax(axis=1)  # (K,)
    taken = np.zeros(ious.shape[1], dtype=bool)
    for k in np.argsort(-scores, kind="stable"):
        if best[k] >= thr:
            g = best_gt[k]
            if ignore[g]:
                continue  # matched a difficult object: neither
            if taken[g]:
                fp[k] = 1
            else:
                taken[g], tp[k] = True, 1
        else:
            fp[k] = 1
    return tp, fp


def rotated_map(detections: list[dict], ground_truths: list[dict], num_classes: int,
                iou_thresholds=(0.5,), mode: str = "11points") -> dict:
    """DOTA mAP of rotated detections: one dict per image on each side. Chapter 10.

    Args:
        detections: per image ``rboxes`` (K, 5), ``scores`` (K,), ``labels`` (K,) (tensors or arrays).
        ground_truths: per image ``rboxes`` (G, 5), ``labels`` (G,) and optionally ``difficult`` (G,) bool.
        num_classes: C; labels are 0..C-1.
        iou_thresholds: one mAP per threshold.
        mode: "11points" (the references' default) or "area".

    Returns:
        ``{"mAP": (T,) per threshold, "AP": (T, C) per class (nan for a class without ground truth),
        "num_gts": (C,), "num_dets": (C,)}`` (numpy arrays). Classes without ground truth are left out of the
        mean; with none at all the mAP is 0, as in mmrotate.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truths)} of ground truth; give "
                         "one of each per image, in the same order")
    if mode not in AP_MODES:
        raise ValueError(f"mode must be one of {AP_MODES}, got {mode!r}")
    thresholds = [float(t) for t in iou_thresholds]
    tps = [[[] for _ in range(num_classes)] for _ in thresholds]  # [T][C] list of per-image arrays
    fps = [[[] for _ in range(num_classes)] for _ in thresholds]
    scores = [[] for _ in range(num_classes)]
    num_gts = np.zeros(num_classes, dtype=np.int64)
    for det, gt in zip(detections, ground_truths, strict=True):
        d_boxes, d_scores, d_labels = (torch.as_tensor(det[k]) for k in ("rboxes", "scores", "labels"))
        g_boxes, g_labels = torch.as_tensor(gt["rboxes"]), torch.as_tensor(gt["labels"])
        g_ignore = torch.as_tensor(gt.get("difficult", torch.zeros(len(g_labels), dtype=torch.bool))).bool()
        for c in range(num_classes):
            dm, gm = d_labels == c, g_labels == c
            ignore = g_ignore[gm].numpy()
            num_gts[c] += int((~ignore).sum())
            if not bool(dm.any()):
                continue
            s = d_scores[dm].double().numpy()
            ious = rotated_iou(d_boxes[dm].double(), g_boxes[gm].double()).numpy()  # (K, G)
            scores[c].append(s)
            for t, thr in enumerate(thresholds):
                tp, fp = _match(s, ious, ignore, thr)
                tps[t][c].append(tp)
                fps[t][c].append(fp)
    ap = np.full((len(thresholds), num_classes), np.nan)
    num_dets = np.array([sum(len(s) for s in scores[c]) for c in range(num_classes)])
    for c in range(num_classes):
        if num_gts[c] == 0:
            continue
        if num_dets[c] == 0:
            ap[:, c] = 0.0
            continue
        order = np.argsort(-np.concatenate(scores[c]), kind="stable")  # all images' detections, best first
        for t in range(len(thresholds)):
            tp = np.cumsum(np.concatenate(tps[t][c])[order])
            fp = np.cumsum(np.concatenate(fps[t][c])[order])
            recall = tp / num_gts[c]
            precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            ap[t, c] = average_precision(recall, precision, mode)
    has_gt = num_gts > 0
    m_ap = ap[:, has_gt].mean(axis=1) if has_gt.any() else np.zeros(len(thresholds))
    return {"mAP": m_ap, "AP": ap, "num_gts": num_gts, "num_dets": num_dets}


def dota_metrics(detections: list[dict], ground_truths: list[dict], class_names: list[str],
                 mode: str = "11points") -> dict[str, float]:
    """The numbers ``evaluate`` reports: ``rbox_mAP50`` (DOTA's headline), ``rbox_AP75``, ``rbox_AP`` (the mean
    over IoU 0.50:0.95) and ``rbox_AP50_<class>`` per class (nan without ground truth). Chapter 10."""
    result = rotated_map(detections, ground_truths, len(class_names), COCO_THRESHOLDS, mode)
    metrics = {"rbox_mAP50": float(result["mAP"][0]), "rbox_AP75": float(result["mAP"][5]),
               "rbox_AP": float(result["mAP"].mean())}
    metrics.update({f"rbox_AP50_{name}": float(result["AP"][0, c]) for c, name in enumerate(class_names)})
    return metrics


def evaluate_rotated(model, dataset, device=None, batch_size: int = 8, config=None, progress: bool = True,
                     mode: str = "11points") -> dict[str, float]:
    """DOTA metrics (``dota_metrics``) of an ``RTMDetR`` on a ``DotaDataset``, predicting with the reference's test
    settings (``postprocess.ROTATED_EVAL``) on the model's canvas. Chapter 10."""
    from rtmdet_lesson.rotated.postprocess import ROTATED_EVAL
    from rtmdet_lesson.rotated.predict import predict_rotated

    if dataset.num_objects == 0:
        raise ValueError(f"{dataset.annotation_file} has no objects, so AP is undefined; evaluate on an annotated "
                         "split")
    detections, truths = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluate", disable=not progress):
        indices = range(start, min(start + batch_size, len(dataset)))
        preds = predict_rotated(model, [dataset.load_image(i) for i in indices], config or ROTATED_EVAL,
                                device=device, batch_size=batch_size)
        detections += [{"rboxes": p.rboxes.cpu(), "scores": p.scores.cpu(), "labels": p.labels.cpu()} for p in preds]
        truths += [dataset.target(i) for i in indices]
    return dota_metrics(detections, truths, list(dataset.class_names), mode)


def format_rotated_metrics(metrics: dict[str, float], class_names: list[str]) -> str:
    """A readable table of DOTA metrics: mAP50, AP75, AP@[.5:.95], then AP50 per class, in percent."""
    rows = [("mAP50", metrics["rbox_mAP50"]), ("AP75", metrics["rbox_AP75"]), ("AP", metrics["rbox_AP"])]
    rows += [(f"AP50 {name}", metrics[f"rbox_AP50_{name}"]) for name in class_names]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}} {100 * value:>6.1f}" for name, value in rows)
