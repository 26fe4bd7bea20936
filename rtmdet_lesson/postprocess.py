"""From raw head outputs to instances: thresholds, NMS, dynamic masks, back to the original image (chapter 08).

Per image, in the reference's order (mmdetection's RTMDetInsSepBNHead._predict_by_feat_single and
_bbox_mask_post_process, mmdet/models/dense_heads/rtmdet_ins_head.py):

1. sigmoid the class logits; on each level keep the (prior, class) pairs above ``score_thr`` (multi-label:
   one prior may give several candidates) and of those the ``nms_pre`` best;
2. decode their boxes from the prior points, clamped to the canvas, and map them to original pixels;
3. class-aware NMS, then the ``max_per_img`` best;
4. only for the survivors: the dynamic mask head (stride-8 logits), bilinear x8 to the canvas, crop the
   letterbox's content region, bilinear resize to the original (H0, W0), sigmoid > ``mask_thr`` (computed
   as logit > log(t / (1 - t)), the same test without a sigmoid over millions of pixels).

``decode_masks`` is step 4 as chapter 08 derives it; ``rtmdet_lesson.fast.mask_resize.decode_masks`` gives the
same masks faster and ``optimize_for_inference``'s model passes it in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from rtmdet_lesson.boxes import distance_to_box
from rtmdet_lesson.dynamic_mask import dynamic_mask_logits
from rtmdet_lesson.nms import batched_nms
from rtmdet_lesson.preprocess import Letterbox
from rtmdet_lesson.priors import grid_priors


@dataclass(frozen=True)
class InferenceConfig:
    """Post-processing settings. ``EVAL`` is the reference's test config; ``DEPLOY`` trades recall for speed."""

    score_thr: float = 0.05  # candidates need sigmoid score > score_thr
    nms_pre: int = 1000  # at most this many candidates per level go into NMS
    iou_threshold: float = 0.6  # NMS drops a box overlapping a better one of its class by more than this
    max_per_img: int = 100  # instances kept per image after NMS
    mask_thr: float = 0.5  # mask pixel is on when sigmoid(logit) > mask_thr

    def __post_init__(self):
        if not (0 <= self.score_thr < 1 and 0 < self.mask_thr < 1 and 0 <= self.iou_threshold <= 1):
            raise ValueError(f"{self}: score_thr must be in [0, 1), mask_thr in (0, 1), iou_threshold in [0, 1]")
        if self.nms_pre < 1 or self.max_per_img < 1:
            raise ValueError(f"{self}: nms_pre and max_per_img must be at least 1")


EVAL = InferenceConfig()
DEPLOY = InferenceConfig(score_thr=0.3, nms_pre=200, iou_threshold=0.6, max_per_img=30, mask_thr=0.5)
CONFIGS = {"eval": EVAL, "deploy": DEPLOY}


def resolve_config(config: str | InferenceConfig, score_thr: float | None = None) -> InferenceConfig:
    """``"eval"``, ``"deploy"`` or an ``InferenceConfig`` -> an ``InferenceConfig`` (``score_thr`` overrides)."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown inference config {config!r}; use one of {sorted(CONFIGS)} or an InferenceConfig")
        config = CONFIGS[config]
    if not isinstance(config, InferenceConfig):
        raise ValueError(f"config must be 'eval', 'deploy' or an InferenceConfig, got {type(config).__name__}")
    return config if score_thr is None else replace(config, score_thr=score_thr)


@dataclass
class Instances:
    """What ``predict`` returns for one image (chapter 08).

    boxes (K, 4) x1y1x2y2 in original-image pixels, scores (K,), labels (K,) int64 from 0, masks (K, H0, W0)
    bool at the original resolution (None for a detection-only model), letterbox: how the image was placed on
    the canvas. ``prior_index`` (K,) says which prior (row of ``grid_priors``) predicted each instance.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    letterbox: Letterbox
    prior_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to_coco(self, image_id: int, label_to_category_id: dict[int, int] | None = None) -> list[dict]:
        """COCO result dicts: bbox [x, y, w, h], score, category_id (mapped back), RLE segmentation (str counts).

        ``label_to_category_id`` maps contiguous labels to the dataset's category ids (identity if None).
        """
        boxes = self.boxes.detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()  # (K, 4)
        rles = encode_masks(self.masks) if self.masks is not None else [None] * len(self)
        results = []
        for box, score, label, rle in zip(xywh, self.scores.tolist(), self.labels.tolist(), rles, strict=True):
            if label_to_category_id is not None and label not in label_to_category_id:
                raise ValueError(f"label {label} has no category id in label_to_category_id; pass the dataset's map")
            category_id = label if label_to_category_id is None else label_to_category_id[label]
            result = {"image_id": int(image_id), "category_id": int(category_id), "bbox": box, "score": score}
            if rle is not None:
                result["segmentation"] = rle
            results.append(result)
        return results


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """Bool masks (K, H, W) -> COCO RLE dicts with ``counts`` as str (JSON-ready)."""
    # pycocotools wants (H, W, K) uint8 in Fortran order, which is (K, W, H) in C order: one transposing copy in
    # torch, then the bytes viewed as uint8
    array = masks.detach().cpu().transpose(1, 2).contiguous().view(torch.uint8).numpy().transpose(2, 1, 0)
    rles = mask_utils.encode(array) if masks.shape[0] else []
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]


def select_candidates(
    cls_scores: list[torch.Tensor], score_thr: float, nms_pre: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-label candidates of one image, per level: score > ``score_thr``, then the ``nms_pre`` best.

    Chapter 08 builds this.

    Args:
        cls_scores: per level ``(C, H_l, W_l)`` logits of one image.

    Returns:
        ``(prior_index, labels, scores)``, each ``(M,)``: the row of the concatenated priors, the class and
        its sigmoid score, levels in stride order, each level best first.

    The ``nms_pre`` best pairs of a level all sit on the ``nms_pre`` priors with the best top class: a pair
    outside them would be beaten by the top class of each of those ``nms_pre`` priors. So the top-k runs over
    those priors' ``nms_pre x C`` pairs, not over all ``H_l x W_l x C`` (a 6400 x 80 level at 640: 512,000).
    ``tests/test_postprocess.py`` checks it against the top-k over every pair.
    """
    prior_index, labels, scores = [], [], []
    offset = 0
    logit_thr = math.log(score_thr / (1 - score_thr)) if score_thr > 0 else -math.inf  # sigmoid(x) > t <=> x > logit(t)
    for logits in cls_scores:
        c, h, w = logits.shape
        per_prior = logits.reshape(c, h * w)  # (C, P)
        k = min(nms_pre, c * h * w)
        # (k,) the priors that can hold a top-k pair, those with the best top class; None: all of them (k >= P)
        contenders = per_prior.amax(dim=0).topk(k).indices if k < h * w else None
        pairs = (per_prior if contenders is None else per_prior[:, contenders]).T.reshape(-1)  # (R*C,) prior-major
        # the k best over the threshold = the k best overall, less those under it (sigmoid is monotone)
        best, flat = pairs.topk(k)  # sorted best first
        keep = best > logit_thr  # (k,)
        best, flat = best[keep], flat[keep]  # (M_l,)
        prior = flat // c
        prior_index.append((prior if contenders is None else contenders[prior]) + offset)
        labels.append(flat % c)
        scores.append(best.sigmoid())  # only the kept candidates go through the sigmoid
        offset += h * w
    return torch.cat(prior_index), torch.cat(labels), torch.cat(scores)


def gather_priors(maps: list[torch.Tensor], prior_index: torch.Tensor) -> torch.Tensor:
    """The values at some priors of per-level maps ``[(D, H_l, W_l)]`` of one image -> ``(M, D)``.

    ``prior_index`` counts priors over the levels in order (as ``grid_priors`` rows); only the asked columns are
    copied, not the whole (N, D) concatenation.
    """
    sizes = torch.tensor([m.shape[1] * m.shape[2] for m in maps], device=prior_index.device)
    starts = torch.cumsum(sizes, 0) - sizes  # (L,) first prior of each level
    level = torch.bucketize(prior_index, starts, right=True) - 1  # (M,)
    out = maps[0].new_empty(len(prior_index), maps[0].shape[0])
    for lvl, values in enumerate(maps):
        pick = torch.nonzero(level == lvl).flatten()
        out[pick] = values.reshape(values.shape[0], -1)[:, prior_index[pick] - starts[lvl]].T  # (m_l, D)
    return out


def mask_logits_to_original(logits: torch.Tensor, letterbox: Letterbox, mask_stride: int = 8) -> torch.Tensor:
    """Stride-8 mask logits ``(K, h, w)`` on the canvas -> logits ``(K, H0, W0)`` on the original image.

    Bilinear x8 to the canvas (align_corners False), crop the content region the letterbox filled, then
    bilinear resize to ``original_size``: the y size from ``scale_y``, the x size from ``scale_x`` (swapping
    them is the reference's bug: mmdetection issues #10179 and #11230, fixed by PR #11231).
    """
    k, h, w = logits.shape
    canvas = F.interpolate(logits[None], size=(h * mask_stride, w * mask_stride), mode="bilinear", align_corners=False)
    new_h, new_w = letterbox.resized_size
    top, left = letterbox.pad_top, letterbox.pad_left
    content = canvas[:, :, top : top + new_h, left : left + new_w]  # (1, K, new_h, new_w)
    if (new_h, new_w) != tuple(letterbox.original_size):
        content = F.interpolate(content, size=tuple(letterbox.original_size), mode="bilinear", align_corners=False)
    return content[0]  # (K, H0, W0)


def decode_masks(mask_feats: torch.Tensor, kernels: torch.Tensor, priors: torch.Tensor, letterbox: Letterbox,
                 mask_thr: float, mask_stride: int = 8) -> torch.Tensor:
    """Step 4 for one image's K kept instances: bool masks ``(K, H0, W0)`` on the original image. Chapter 08.

    ``mask_feats (1, 8, h, w)`` the image's prototypes, ``kernels (K, 169)``, ``priors (K, 4)``. A pixel is on
    where ``sigmoid(logit) > mask_thr``, tested as ``logit > log(t / (1 - t))``.
    """
    image_index = torch.zeros(len(kernels), dtype=torch.int64, device=kernels.device)  # all from this image
    logits = dynamic_mask_logits(mask_feats, kernels, priors, image_index)  # (K, h, w) stride 8
    logit_thr = math.log(mask_thr / (1 - mask_thr))
    return mask_logits_to_original(logits, letterbox, mask_stride) > logit_thr  # (K, H0, W0)


def check_letterboxes(cls_scores: list[torch.Tensor], letterboxes: list[Letterbox],
                      strides: tuple[int, ...]) -> tuple[int, int]:
    """The network input's ``(H, W)``, after checking one letterbox per image, each for that canvas."""
    if len(letterboxes) != cls_scores[0].shape[0]:
        raise ValueError(f"got {len(letterboxes)} letterboxes for a batch of {cls_scores[0].shape[0]} images")
    h, w = cls_scores[0].shape[-2:]
    canvas = (h * strides[0], w * strides[0])
    if any(tuple(box.canvas_size) != canvas for box in letterboxes):
        raise ValueError(f"the letterboxes' canvas sizes do not match the network input {canvas}")
    return canvas


def _empty(letterbox: Letterbox, with_mask: bool, like: torch.Tensor) -> Instances:
    h0, w0 = letterbox.original_size
    long = torch.zeros(0, dtype=torch.int64, device=like.device)
    return Instances(
        boxes=like.new_zeros(0, 4),
        scores=like.new_zeros(0),
        labels=long,
        masks=torch.zeros(0, h0, w0, dtype=torch.bool, device=like.device) if with_mask else None,
        letterbox=letterbox,
        prior_index=long,
    )


def postprocess(
    outputs,
    letterboxes: list[Letterbox],
    config: str | InferenceConfig = "eval",
    strides: tuple[int, ...] = (8, 16, 32),
    mask_decoder: Callable = decode_masks,
) -> list[Instances]:
    """Raw ``HeadOutput`` of a batch -> one ``Instances`` per image (chapter 08 builds this step by step).

    ``letterboxes[i]`` says how image ``i`` was placed on the canvas. Works for detection-only outputs too
    (``kernel_preds`` None: ``masks`` is None). ``mask_decoder`` computes step 4 (``decode_masks``'s arguments).
    """
    cfg = resolve_config(config)
    cls_scores, bbox_preds = outputs.cls_scores, outputs.bbox_preds
    with_mask = outputs.kernel_preds is not None and outputs.mask_feats is not None
    canvas = check_letterboxes(cls_scores, letterboxes, strides)
    sizes = [tuple(s.shape[-2:]) for s in cls_scores]
    priors = grid_priors(sizes, strides, device=bbox_preds[0].device, dtype=bbox_preds[0].dtype)  # (N, 4)
    results = []
    for i, letterbox in enumerate(letterboxes):
        prior_index, labels, scores = select_candidates([s[i] for s in cls_scores], cfg.score_thr, cfg.nms_pre)
        if prior_index.numel() == 0:
            results.append(_empty(letterbox, with_mask, priors))
            continue
        distances = gather_priors([p[i] for p in bbox_preds], prior_index)  # (M, 4)
        boxes = distance_to_box(priors[prior_index, :2], distances, max_shape=canvas)  # (M, 4)
        boxes = letterbox.boxes_to_original(boxes)  # (M, 4) original pixels
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # drop boxes squashed to nothing
        prior_index, labels, scores, boxes = prior_index[valid], labels[valid], scores[valid], boxes[valid]
        keep = batched_nms(boxes, scores, labels, cfg.iou_threshold, max_keep=cfg.max_per_img)  # (K,) best first
        prior_index, labels, scores, boxes = prior_index[keep], labels[keep], scores[keep], boxes[keep]
        masks = None
        if with_mask:
            if keep.numel() == 0:
                masks = torch.zeros(0, *letterbox.original_size, dtype=torch.bool, device=boxes.device)
            else:
                kernels = gather_priors([k[i] for k in outputs.kernel_preds], prior_index)  # (K, 169)
                masks = mask_decoder(outputs.mask_feats[i : i + 1], kernels, priors[prior_index], letterbox,
                                     cfg.mask_thr, strides[0])  # (K, H0, W0) bool
        results.append(Instances(boxes, scores, labels, masks, letterbox, prior_index))
    return results
