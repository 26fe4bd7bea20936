"""The dynamic soft-label assigner: which priors learn which object, and how confidently (chapter 05).

For every image, the reference (mmdetection's ``DynamicSoftLabelAssigner``) does:

1. **Candidates**: priors whose point lies strictly inside at least one ground-truth (GT) box. Costs are
   computed for every (candidate, GT) pair, also against GTs the candidate is not inside.
2. **Costs** per pair, summed with weights 1 / 3 / 1:
   - soft classification cost: sum over all classes of BCE(logit, y) * |y - sigmoid(logit)|^2 where the soft
     label y is the pair's IoU at the GT class and 0 elsewhere;
   - IoU cost: -log(IoU + 1e-7);
   - soft centre prior: 10 ** (distance(prior point, GT centre) / prior stride - 3); the GT centre is the
     mask's centre of mass when masks are given, otherwise the box centre.
3. **Dynamic k**: each GT takes k = int(sum of its top-13 IoUs) (at least 1) lowest-cost candidates.
4. **Conflicts**: a prior taken by several GTs keeps the GT with the lowest cost over *all* GT columns.
5. Positives get the GT's label and a soft target equal to the IoU of their (detached) predicted box with it.

This module does it for a whole batch at once: GTs are padded to the largest count with a validity mask and
candidates are gathered and padded the same way, so every cost tensor is (B, M candidates, G) and none is
(priors x objects x classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rtmdet_lesson.boxes import box_iou

COST_EPS = 1e-7  # the reference's EPS in -log(IoU + EPS) and in the centre-of-mass normaliser


@dataclass
class AssignResult:
    """What the assigner decides for each of the N priors of each of the B images.

    gt_index: (B, N) int64, the matched GT's index in its image, -1 for background.
    labels: (B, N) int64, the matched GT's class, ``num_classes`` for background (the reference's convention).
    soft_targets: (B, N) float, IoU of the prior's predicted box with its GT; 0 for background.
    """

    gt_index: Tensor
    labels: Tensor
    soft_targets: Tensor

    @property
    def pos_mask(self) -> Tensor:
        """(B, N) bool, True for positive priors."""
        return self.gt_index >= 0

    @property
    def num_pos(self) -> int:
        return int(self.pos_mask.sum())


@dataclass
class CostTerms:
    """The separate cost terms of one image, for inspection (chapter 05's heat maps and widget).

    candidate_mask: (N,) bool, priors strictly inside some GT box; candidates: (M,) their indices.
    ious, cls, iou, center: (M, G); ``iou`` is -log(IoU + 1e-7) before its weight of 3.
    """

    candidate_mask: Tensor
    candidates: Tensor
    ious: Tensor
    cls: Tensor
    iou: Tensor
    center: Tensor

    def total(self, cls_weight: float = 1.0, iou_weight: float = 3.0, center_weight: float = 1.0) -> Tensor:
        """(M, G) weighted total cost; the defaults are the reference's 1 / 3 / 1."""
        return cls_weight * self.cls + iou_weight * self.iou + center_weight * self.center


def center_of_mass(masks: Tensor, eps: float = COST_EPS) -> Tensor:
    """Centres of mass of binary masks in pixel-index coordinates: (G, H, W) -> (G, 2) as (x, y).

    Pixel (row i, column j) sits at (j, i): no +0.5, as in the reference. An empty mask gives (0, 0).
    Reduces rows and columns separately so that no (G, H, W) integer tensor is built. Chapter 05 uses it.
    """
    g, h, w = masks.shape
    counts = masks.view(torch.uint8)  # the same bytes: summing them in int32 skips a (G, H, W) int64 copy
    rows = counts.sum(dim=2, dtype=torch.int32)  # (G, H) pixels per row
    cols = counts.sum(dim=1, dtype=torch.int32)  # (G, W) pixels per column
    sum_y = (rows * torch.arange(h, device=masks.device)).sum(1)  # (G,) exact integer sums
    sum_x = (cols * torch.arange(w, device=masks.device)).sum(1)  # (G,)
    normaliser = rows.sum(1).float().clamp(min=eps)  # (G,)
    return torch.stack([sum_x / normaliser, sum_y / normaliser], dim=1)  # (G, 2)


def box_centers(boxes: Tensor) -> Tensor:
    """Centres of x1y1x2y2 boxes: (..., 4) -> (..., 2)."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def pad_targets(
    boxes: list[Tensor], labels: list[Tensor], centers: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stack per-image GTs of different counts into padded batch tensors. Chapter 05 uses it.

    boxes[b] (G_b, 4), labels[b] (G_b,), centers[b] (G_b, 2) ->
    boxes (B, G, 4), labels (B, G) (0 where padded), centers (B, G, 2), valid (B, G) bool; G = max G_b.
    """
    b, g = len(boxes), max((len(x) for x in boxes), default=0)
    ref = boxes[0]
    out_boxes = ref.new_zeros((b, g, ref.shape[-1]))  # 4 numbers per box, or 5 for rotated boxes (chapter 10)
    out_labels = torch.zeros((b, g), dtype=torch.int64, device=ref.device)
    out_centers = ref.new_zeros((b, g, 2))
    valid = torch.zeros((b, g), dtype=torch.bool, device=ref.device)
    for i, (bx, lb, ct) in enumerate(zip(boxes, labels, centers, strict=True)):
        n = len(bx)
        out_boxes[i, :n], out_labels[i, :n], out_centers[i, :n], valid[i, :n] = bx, lb, ct, True
    return out_boxes, out_labels, out_centers, valid


def candidate_mask(points: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
    """Priors strictly inside at least one valid GT box: points (N, 2), gt_boxes (B, G, 4), gt_valid (B, G)
    -> (B, N) bool. A point on a box edge is not inside (offset-0 priors sit on cell corners)."""
    x = points[None, :, None, 0]  # (1, N, 1)
    y = points[None, :, None, 1]  # (1, N, 1)
    x1, y1, x2, y2 = (gt_boxes[:, None, :, i] for i in range(4))  # (B, 1, G) each
    inside = (x > x1) & (y > y1) & (x < x2) & (y < y2) & gt_valid[:, None, :]  # (B, N, G)
    return inside.any(dim=2)


def soft_classification_cost(logits: Tensor, gt_labels: Tensor, ious: Tensor) -> Tensor:
    """Soft classification cost without the (B, M, G, C) tensor. Chapter 05 derives it.

    logits (B, M, C), gt_labels (B, G) int64, ious (B, M, G) -> (B, M, G).

    The plain form is sum_c BCE(x_c, y_c) * |y_c - sigmoid(x_c)|^2 with y = IoU at the GT class, 0 elsewhere.
    Every class except the GT's contributes the "negative" term n(x) = BCE(x, 0) * sigmoid(x)^2, which does
    not depend on the GT, so the sum is  sum_c n(x_c)  -  n(x_gt)  +  BCE(x_gt, IoU) * |IoU - sigmoid(x_gt)|^2:
    a per-candidate vector (B, M) plus two gathered (B, M, G) terms.
    """
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    neg = neg * logits.sigmoid().pow(2)  # (B, M, C)
    neg_sum = neg.sum(dim=2)  # (B, M)
    at_gt = gt_labels[:, None, :].expand(*ious.shape)  # (B, M, G) a view: the class of each column's GT
    x_gt = logits.gather(2, at_gt)  # (B, M, G) logit at each GT's class
    cost = F.binary_cross_entropy_with_logits(x_gt, ious, reduction="none")  # (B, M, G)
    cost *= x_gt.sigmoid_().sub_(ious).abs_().pow_(2)
    neg_gt = neg.gather(2, at_gt)  # (B, M, G)
    return neg_gt.neg_().add_(neg_sum[:, :, None]).add_(cost)


def iou_cost(ious: Tensor) -> Tensor:
    """-log(IoU + 1e-7), any shape; the assigner weighs it by 3. Chapter 05."""
    return (ious + COST_EPS).log_().neg_()


def center_prior_cost(
    points: Tensor, strides: Tensor, centers: Tensor, radius: float = 3.0, base: float = 10.0
) -> Tensor:
    """Soft centre prior base ** (distance / stride - radius). Chapter 05.

    points (B, M, 2) prior points, strides (B, M), centers (B, G, 2) -> (B, M, G). The distance is divided by
    the prior's stride (without that, 10 ** (d - 3) overflows for any object a few pixels away).
    """
    dx = points[:, :, None, 0] - centers[:, None, :, 0]  # (B, M, G)
    dy = points[:, :, None, 1] - centers[:, None, :, 1]  # (B, M, G)
    distance = dx.pow_(2).add_(dy.pow_(2)).sqrt_().div_(strides[:, :, None])
    return torch.pow(base, distance.sub_(radius))


def gather_candidates(valid: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of each image's candidate priors, padded to the largest count M.

    valid (B, N) bool -> index (B, M) int64 (padded slots hold N, one past the end), index_valid (B, M) bool.
    Candidates keep their prior order.
    """
    n = valid.shape[1]
    counts = valid.sum(dim=1)  # (B,)
    m = int(counts.max()) if valid.numel() else 0
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :m]  # (B, M) candidates first
    index_valid = torch.arange(m, device=valid.device)[None, :] < counts[:, None]  # (B, M)
    return order.masked_fill(~index_valid, n), index_valid


def dynamic_k_matching(cost: Tensor, ious: Tensor, pair_valid: Tensor, topk: int = 13) -> Tensor:
    """Dynamic-k selection and conflict resolution. Chapter 05 builds it.

    cost (B, M, G) with +inf on invalid pairs, ious (B, M, G) with 0 on invalid pairs, pair_valid (B, M, G)
    -> matched GT index per candidate (B, M) int64, -1 where unmatched.

    Per GT: k = int(sum of its top-min(topk, M) IoUs), at least 1; take the k lowest-cost candidates. A candidate
    taken by several GTs keeps the GT with the lowest cost over all GT columns (an argmin over the whole row).
    Padded candidates have IoU 0, so they never change a top-k sum: IoUs are >= 0.
    """
    gt_valid = pair_valid.any(dim=1)  # (B, G)
    dynamic_ks = ious.topk(min(topk, ious.shape[1]), dim=1).values.sum(dim=1).int().clamp(min=1)  # (B, G)
    dynamic_ks = dynamic_ks.masked_fill(~gt_valid, 0)
    max_k = int(dynamic_ks.max()) if dynamic_ks.numel() else 0
    matched = torch.full(cost.shape[:2], -1, dtype=torch.int64, device=cost.device)  # (B, M)
    if max_k == 0:
        return matched
    lowest = cost.topk(max_k, dim=1, largest=False).indices  # (B, k_max, G) candidate indices, cheapest first
    take = torch.arange(max_k, device=cost.device)[None, :, None] < dynamic_ks[:, None, :]  # (B, k_max, G)
    matching = torch.zeros_like(pair_valid).scatter_(1, lowest, take) & pair_valid  # (B, M, G)
    num_matches = matching.sum(dim=2)  # (B, M)
    only = matching.to(torch.uint8).argmax(dim=2)  # (B, M) the GT of single matches
    best = cost.argmin(dim=2)  # (B, M) conflict winner over all GT columns
    matched = torch.where(num_matches > 1, best, only)
    return matched.masked_fill_(num_matches == 0, -1)


class DynamicSoftLabelAssigner:
    """RTMDet's assigner, batched. Chapter 05 builds it step by step.

    The reference exposes ``topk`` (13), ``iou_weight`` (3) and ``soft_center_radius`` (3); the class weight
    (1), centre weight (1) and the centre prior's base (10) are fixed there and are arguments here only so
    that chapter 05's widget can move them.
    """

    def __init__(
        self,
        topk: int = 13,
        iou_weight: float = 3.0,
        soft_center_radius: float = 3.0,
        cls_weight: float = 1.0,
        center_weight: float = 1.0,
        center_base: float = 10.0,
    ):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk = topk
        self.iou_weight = iou_weight
        self.soft_center_radius = soft_center_radius
        self.cls_weight = cls_weight
        self.center_weight = center_weight
        self.center_base = center_base

    def candidate_mask(self, points: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
        """Priors that may take a GT: points (N, 2), gt_boxes (B, G, 4), gt_valid (B, G) -> (B, N) bool.
        :func:`candidate_mask` here; the rotated assigner (chapter 10) tests rotated boxes instead."""
        return candidate_mask(points, gt_boxes, gt_valid)

    def pairwise_iou(self, boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """IoU of every candidate's predicted box with every GT: (B, M, 4), (B, G, 4) -> (B, M, G).
        :func:`box_iou` here; the rotated assigner (chapter 10) uses rotated IoU instead."""
        return box_iou(boxes, gt_boxes)

    def candidate_costs(
        self, cls_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_valid, gt_centers, valid
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Gather the candidates (``valid`` (B, N)) and compute their IoUs and unweighted cost terms.

        Returns index (B, M), index_valid (B, M), pair_valid (B, M, G), ious, cls cost, centre cost (B, M, G);
        ious are 0 on invalid pairs.
        """
        b, n, _ = cls_logits.shape
        index, index_valid = gather_candidates(valid)  # (B, M)
        safe = index.clamp(max=n - 1)
        batch = torch.arange(b, device=index.device)[:, None]  # (B, 1)
        pair_valid = index_valid[:, :, None] & gt_valid[:, None, :]  # (B, M, G)
        ious = self.pairwise_iou(pred_boxes[batch, safe], gt_boxes).masked_fill_(~pair_valid, 0)  # (B, M, G)
        cls = soft_classification_cost(cls_logits[batch, safe], gt_labels, ious)  # (B, M, G)
        center = center_prior_cost(
            priors[safe, :2], priors[safe, 2], gt_centers, self.soft_center_radius, self.center_base
        )  # (B, M, G)
        return index, index_valid, pair_valid, ious, cls, center

    @torch.no_grad()
    def __call__(
        self,
        cls_logits: Tensor,
        pred_boxes: Tensor,
        priors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_valid: Tensor,
        gt_centers: Tensor | None = None,
    ) -> AssignResult:
        """Assign the priors of a batch.

        cls_logits (B, N, C) and pred_boxes (B, N, 4) x1y1x2y2: the network's outputs (detached here);
        priors (N, 4) as (x, y, stride_w, stride_h); gt_boxes (B, G, 4), gt_labels (B, G) int64,
        gt_valid (B, G) bool (False on padding, see :func:`pad_targets`); gt_centers (B, G, 2): the masks'
        centres of mass for RTMDet-Ins, or None for the box centres (RTMDet).
        """
        b, n, c = cls_logits.shape
        gt_index = torch.full((b, n), -1, dtype=torch.int64, device=cls_logits.device)
        soft_targets = pred_boxes.new_zeros((b, n))
        if gt_centers is None:
            gt_centers = box_centers(gt_boxes)
        gt_boxes, gt_centers = gt_boxes.to(pred_boxes.dtype), gt_centers.to(pred_boxes.dtype)
        valid = self.candidate_mask(priors[:, :2], gt_boxes, gt_valid)  # (B, N)
        if valid.any():
            index, _, pair_valid, ious, cost, center = self.candidate_costs(
                cls_logits, pred_boxes, priors, gt_boxes, gt_labels.masked_fill(~gt_valid, 0), gt_valid,
                gt_centers, valid,
            )
            if self.cls_weight != 1.0:
                cost *= self.cls_weight
            cost += iou_cost(ious).mul_(self.iou_weight)
            cost += center.mul_(self.center_weight)
            del center
            # Far-away pairs can overflow to inf; keep them finite so padding (inf) always sorts last.
            cost.clamp_(max=torch.finfo(cost.dtype).max).masked_fill_(~pair_valid, float("inf"))
            matched = dynamic_k_matching(cost, ious, pair_valid, self.topk)  # (B, M)
            matched_iou = ious.gather(2, matched.clamp(min=0)[:, :, None])[:, :, 0]  # (B, M)
            matched_iou = matched_iou.masked_fill_(matched < 0, 0)
            # Scatter back to all priors; padded slots write to the spare column n, dropped after.
            gt_index = torch.cat([gt_index, gt_index[:, :1]], dim=1).scatter_(1, index, matched)[:, :n]
            soft_targets = torch.cat([soft_targets, soft_targets[:, :1]], dim=1)
            soft_targets = soft_targets.scatter_(1, index, matched_iou)[:, :n]
        labels = gt_labels.gather(1, gt_index.clamp(min=0)) if gt_labels.shape[1] else gt_index.clone()
        labels = labels.masked_fill(gt_index < 0, c)
        return AssignResult(gt_index=gt_index, labels=labels, soft_targets=soft_targets)


def assignment_costs(
    cls_logits: Tensor,
    pred_boxes: Tensor,
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_centers: Tensor | None = None,
    soft_center_radius: float = 3.0,
    center_base: float = 10.0,
) -> CostTerms:
    """The three cost terms of one image, separately, for chapter 05's heat maps and widget.

    cls_logits (N, C), pred_boxes (N, 4), priors (N, 4), gt_boxes (G, 4), gt_labels (G,), gt_centers (G, 2)
    or None (box centres) -> :class:`CostTerms` with (M candidates, G) tensors. ``CostTerms.total()`` is the
    cost the assigner ranks.
    """
    assigner = DynamicSoftLabelAssigner(soft_center_radius=soft_center_radius, center_base=center_base)
    if gt_centers is None:
        gt_centers = box_centers(gt_boxes)
    gt_valid = torch.ones(1, len(gt_boxes), dtype=torch.bool, device=gt_boxes.device)  # (1, G)
    valid = candidate_mask(priors[:, :2], gt_boxes[None], gt_valid)  # (1, N)
    with torch.no_grad():
        index, _, _, ious, cls, center = assigner.candidate_costs(
            cls_logits[None], pred_boxes[None], priors, gt_boxes[None], gt_labels[None], gt_valid,
            gt_centers[None], valid,
        )
    return CostTerms(
        candidate_mask=valid[0], candidates=index[0], ious=ious[0], cls=cls[0], iou=iou_cost(ious[0]),
        center=center[0],
    )
