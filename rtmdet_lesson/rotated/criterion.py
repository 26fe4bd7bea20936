"""From RTMDet-R's raw outputs and rotated ground truth to its two training losses (chapter 10).

    flatten the levels -> decode rotated boxes -> assign (detached) -> QFL + 2 * rotated IoU loss

As mmrotate's ``RotatedRTMDetHead.loss_by_feat``: quality focal loss (beta 2) for the classes and
``RotatedIoULoss(mode='linear')``, 1 - IoU with the IoU clamped to at least 1e-6, weight 2, on the decoded
rotated boxes of the positives, each weighted by its soft target. Both are divided by the sum of the soft
targets (clamped to >= 1), as in the axis-aligned criterion (``criterion.py``). There is no separate angle
loss: the angle learns only through the IoU of the box it turns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtmdet_lesson.assigner import pad_targets
from rtmdet_lesson.criterion import check_batch, check_labels, flatten_levels, level_strides, normaliser
from rtmdet_lesson.losses import quality_focal_loss
from rtmdet_lesson.priors import grid_priors
from rtmdet_lesson.rotated.assigner import RotatedDynamicSoftLabelAssigner
from rtmdet_lesson.rotated.coder import distance_angle_to_rbox
from rtmdet_lesson.rotated.geometry import regularize_le90
from rtmdet_lesson.rotated.head import RotatedHeadOutput
from rtmdet_lesson.rotated.iou import rotated_iou

CLS_WEIGHT, BBOX_WEIGHT = 1.0, 2.0
IOU_LOSS_EPS = 1e-6  # RotatedIoULoss clamps the IoU to this before 1 - IoU


def rotated_iou_loss(pred: Tensor, target: Tensor, eps: float = IOU_LOSS_EPS) -> Tensor:
    """1 - IoU of matching rotated boxes: (K, 5), (K, 5) -> (K,) in [0, 1]. Chapter 10 builds it.

    Unlike GIoU it gives no gradient to a box that does not overlap its target; RTMDet-R's positives are
    priors inside their GT, whose boxes overlap it from the start.
    """
    return 1 - rotated_iou(pred, target, aligned=True).clamp(min=eps)


def check_rotated_targets(targets: list[dict], batch_size: int, num_classes: int) -> None:
    """Raise a ValueError naming the problem and the fix for targets the rotated losses cannot use."""
    check_batch(targets, batch_size)
    for i, t in enumerate(targets):
        where = f"targets[{i}]"
        if not isinstance(t, dict) or not all(isinstance(t.get(k), Tensor) for k in ("rboxes", "labels")):
            raise ValueError(f"{where} needs tensors 'rboxes' (G, 5) cx, cy, w, h, angle and 'labels' (G,)")
        rboxes = t["rboxes"]
        if not rboxes.is_floating_point() or rboxes.ndim != 2 or rboxes.shape[1] != 5:
            raise ValueError(f"{where}['rboxes'] must be float (G, 5) as cx, cy, w, h, angle (radians), got "
                             f"{rboxes.dtype} {tuple(rboxes.shape)}; convert with rboxes.float() and reshape(-1, 5)")
    check_labels(targets, num_classes, count_key="rboxes")


def decode_rboxes(outputs: RotatedHeadOutput, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """All priors ``(N, 4)`` (x, y, stride, stride) and their decoded boxes ``(B, N, 5)`` (float32, no clipping)."""
    feature_sizes, strides = level_strides(outputs.cls_scores, image_size)
    distances = flatten_levels(outputs.bbox_preds).float()  # (B, N, 4)
    angles = flatten_levels(outputs.angle_preds).float()[..., 0]  # (B, N)
    priors = grid_priors(feature_sizes, strides, device=distances.device)  # (N, 4)
    return priors, distance_angle_to_rbox(priors[:, :2], distances, angles)  # (N, 4), (B, N, 5)


def compute_rotated_losses(outputs: RotatedHeadOutput, targets: list[dict], image_size: tuple[int, int],
                           assigner: RotatedDynamicSoftLabelAssigner | None = None) -> dict:
    """The training losses of a batch. Chapter 10 builds this.

    Args:
        outputs: the network's raw :class:`RotatedHeadOutput` for B images.
        targets: one dict per image: rboxes (G, 5) float (cx, cy, w, h, angle in radians) in pixels of the
            network input, labels (G,) int64 in 0..C-1.
        image_size: (H, W) of the network input.
        assigner: defaults to ``RotatedDynamicSoftLabelAssigner()`` (the reference's settings).

    Returns:
        dict(loss_cls, loss_bbox, num_pos): 0-dim float32 tensors (weights 1 and 2 included) and the number of
        positive priors (int).
    """
    with torch.autocast(outputs.cls_scores[0].device.type, enabled=False):  # fp32 under mixed precision too
        cls_logits = flatten_levels(outputs.cls_scores).float()  # (B, N, C)
        b, n, c = cls_logits.shape
        check_rotated_targets(targets, b, c)
        priors, boxes = decode_rboxes(outputs, image_size)  # (N, 4), (B, N, 5)
        device = cls_logits.device
        gt = [regularize_le90(t["rboxes"].to(device).float()) for t in targets]  # (G_b, 5) each
        gt_boxes, gt_labels, gt_centers, gt_valid = pad_targets(
            gt, [t["labels"].to(device) for t in targets], [g[:, :2] for g in gt]
        )  # (B, G, 5), (B, G), (B, G, 2), (B, G)
        assigner = assigner or RotatedDynamicSoftLabelAssigner()
        result = assigner(cls_logits.detach(), boxes.detach(), priors, gt_boxes, gt_labels, gt_valid, gt_centers)

        loss_cls = quality_focal_loss(
            cls_logits.reshape(b * n, c), result.labels.reshape(-1), result.soft_targets.reshape(-1)
        ).sum() / normaliser(result.soft_targets.sum())  # (B*N, C) -> scalar

        pos_image, pos_prior = result.pos_mask.nonzero(as_tuple=True)  # (K,), (K,)
        pos_gt = result.gt_index[pos_image, pos_prior]  # (K,)
        weights = result.soft_targets[pos_image, pos_prior]  # (K,)
        if len(pos_prior):
            per_box = rotated_iou_loss(boxes[pos_image, pos_prior], gt_boxes[pos_image, pos_gt]) * weights  # (K,)
            loss_bbox = per_box.sum() / normaliser(weights.sum())
        else:  # zero, but still connected to every box and angle output
            loss_bbox = boxes.sum() * 0
        return dict(loss_cls=CLS_WEIGHT * loss_cls, loss_bbox=BBOX_WEIGHT * loss_bbox, num_pos=len(pos_prior))
