"""From raw head outputs and ground truth to the three training losses (chapter 06).

    flatten the levels -> decode boxes -> assign (detached) -> QFL + 2 * GIoU + 2 * Dice

Normalisers, as in the reference: the classification and box losses are divided by the sum of the IoU
soft targets of all positives (not by their count), the Dice loss by the number of positives; each is
clamped to at least 1 so that a batch with no positives gives zero losses, not NaN. Losses are computed in
float32 whatever the network's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rtmdet_lesson.assigner import AssignResult, DynamicSoftLabelAssigner, box_centers, center_of_mass, pad_targets
from rtmdet_lesson.boxes import distance_to_box
from rtmdet_lesson.dynamic_mask import dynamic_mask_logits
from rtmdet_lesson.head import HeadOutput
from rtmdet_lesson.losses import dice_loss, giou_loss, quality_focal_loss
from rtmdet_lesson.priors import grid_priors

CLS_WEIGHT, BBOX_WEIGHT, MASK_WEIGHT = 1.0, 2.0, 2.0
MASK_LOSS_STRIDE = 4  # Dice is computed on stride-4 maps: stride-8 logits upsampled x2, GT masks sliced [2::4]


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """Per-level maps [(B, D, H_l, W_l)] -> (B, N, D), each level row-major like the priors. Chapter 06."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1)


def normaliser(total: Tensor) -> Tensor:
    """A loss normaliser clamped to >= 1 (the reference also averages it over GPUs first, with reduce_mean)."""
    return total.detach().clamp(min=1)


def check_batch(targets: list[dict], batch_size: int) -> None:
    """Raise a ValueError unless ``targets`` is a list with one dict per image."""
    if not isinstance(targets, (list, tuple)) or len(targets) != batch_size:
        got = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"targets must be a list with one dict per image ({batch_size}), got {got}")


def check_labels(targets: list[dict], num_classes: int, count_key: str = "boxes") -> None:
    """Raise a ValueError naming the fix unless every ``labels`` is int64 ``(G,)`` with values in 0..C-1."""
    for i, t in enumerate(targets):
        labels, count = t["labels"], len(t[count_key])
        if labels.dtype != torch.int64 or labels.shape != (count,):
            raise ValueError(f"targets[{i}]['labels'] must be int64 of shape ({count},), got {labels.dtype} "
                             f"{tuple(labels.shape)}; convert with labels.long()")
    labels = torch.cat([t["labels"] for t in targets])  # (sum G,): one host synchronisation for the whole batch
    if len(labels) and not bool(((labels >= 0) & (labels < num_classes)).all()):
        i = next(i for i, t in enumerate(targets) if len(t["labels"]) and (t["labels"].min() < 0
                                                                             or t["labels"].max() >= num_classes))
        bad = targets[i]["labels"]
        raise ValueError(f"targets[{i}]['labels'] must lie in 0..{num_classes - 1}, got {bad.min().item()}.."
                         f"{bad.max().item()}; map the dataset's category ids to contiguous labels "
                         "(CocoInstanceDataset does) or build the model with the right num_classes")


def check_targets(targets: list[dict], batch_size: int, num_classes: int, image_size: tuple[int, int],
                  need_masks: bool) -> None:
    """Raise a ValueError naming the problem and the fix for targets the losses cannot use."""
    check_batch(targets, batch_size)
    h, w = image_size
    for i, t in enumerate(targets):
        where = f"targets[{i}]"
        for key in ("boxes", "labels") + (("masks",) if need_masks else ()):
            if key not in t or not isinstance(t[key], Tensor):
                raise ValueError(f"{where} needs a tensor '{key}' (boxes (G, 4), labels (G,), masks (G, H, W))")
        boxes = t["boxes"]
        if not boxes.is_floating_point() or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}['boxes'] must be float (G, 4) x1y1x2y2 pixels, got {boxes.dtype} "
                             f"{tuple(boxes.shape)}; convert with boxes.float() and reshape(-1, 4)")
        if need_masks:
            masks = t["masks"]
            if masks.dtype != torch.bool or masks.shape != (len(boxes), h, w):
                raise ValueError(f"{where}['masks'] must be bool ({len(boxes)}, {h}, {w}) at the network input "
                                 f"size, got {masks.dtype} {tuple(masks.shape)}; letterbox/pad the masks with "
                                 "the image and convert with masks.bool()")
    check_labels(targets, num_classes)


def level_strides(cls_scores: list[Tensor], image_size: tuple[int, int]) -> tuple[list[tuple[int, int]], list[int]]:
    """The ``(H_l, W_l)`` of each level's maps and its stride, checked against the network input ``(H, W)``."""
    feature_sizes = [tuple(m.shape[-2:]) for m in cls_scores]
    strides = [image_size[0] // h for h, _ in feature_sizes]
    if any(h * s != image_size[0] or w * s != image_size[1] for (h, w), s in zip(feature_sizes, strides, strict=True)):
        raise ValueError(f"feature maps {feature_sizes} do not divide image_size {tuple(image_size)}; pass the "
                         "(H, W) of the batch the outputs were computed from")
    return feature_sizes, strides


def upsample_x2(logits: Tensor) -> Tensor:
    """Bilinear x2 (align_corners False) of mask logits: ``(K, h, w) -> (K, 2h, 2w)``, as the reference does."""
    k, h, w = logits.shape
    if k == 0:  # F.interpolate refuses a tensor with no channels
        return logits.new_zeros(0, 2 * h, 2 * w)
    return F.interpolate(logits[None], scale_factor=2, mode="bilinear", align_corners=False)[0]  # (K, 2h, 2w)


@dataclass(frozen=True)
class MaskLossSteps:
    """The three steps of the mask loss: stride-8 logits, x2 upsampling, Dice. ``rtmdet_lesson.fast.losses`` swaps
    in steps that compute the same values faster on a CPU."""

    mask_logits: Callable = dynamic_mask_logits
    upsample: Callable = upsample_x2
    dice: Callable = dice_loss


PLAIN_MASK_LOSS = MaskLossSteps()


def compute_losses(outputs: HeadOutput, targets: list[dict], image_size: tuple[int, int],
                   assigner: DynamicSoftLabelAssigner | None = None,
                   mask_steps: MaskLossSteps = PLAIN_MASK_LOSS) -> dict:
    """The training losses of a batch. Chapter 06 builds this.

    Args:
        outputs: the network's raw :class:`HeadOutput` for a batch of B images.
        targets: one dict per image: boxes (G, 4) float x1y1x2y2 pixels of the network input, labels (G,) int64
            in 0..C-1, masks (G, H, W) bool at the network input size (needed for RTMDet-Ins only).
        image_size: (H, W) of the network input.
        assigner: defaults to the reference's DynamicSoftLabelAssigner().
        mask_steps: how the mask loss computes its logits, upsamples them and takes Dice (the plain steps).

    Returns:
        dict(loss_cls, loss_bbox[, loss_mask], num_pos): 0-dim float32 tensors (the weights 1 / 2 / 2 are
        included) and the number of positive priors in the batch (int).
    """
    with torch.autocast(outputs.cls_scores[0].device.type, enabled=False):  # fp32 under mixed precision too
        return _compute_losses(outputs, targets, image_size, assigner, mask_steps)


def _compute_losses(outputs: HeadOutput, targets: list[dict], image_size: tuple[int, int],
                    assigner: DynamicSoftLabelAssigner | None, mask_steps: MaskLossSteps) -> dict:
    with_mask = outputs.mask_feats is not None
    cls_logits = flatten_levels(outputs.cls_scores).float()  # (B, N, C)
    distances = flatten_levels(outputs.bbox_preds).float()  # (B, N, 4)
    b, n, c = cls_logits.shape
    feature_sizes, strides = level_strides(outputs.cls_scores, image_size)
    check_targets(targets, b, c, image_size, need_masks=with_mask)
    device = cls_logits.device
    targets = [{k: v.to(device) for k, v in t.items() if isinstance(v, Tensor)} for t in targets]
    priors = grid_priors(feature_sizes, strides, device=device)  # (N, 4)
    boxes = distance_to_box(priors[:, :2], distances)  # (B, N, 4) no clamping in training

    # RTMDet-Ins centres each object's soft centre prior on its mask's centre of mass; RTMDet on the box centre.
    centers = [center_of_mass(t["masks"]) if with_mask else box_centers(t["boxes"]) for t in targets]
    gt_boxes, gt_labels, gt_centers, gt_valid = pad_targets(
        [t["boxes"].float() for t in targets], [t["labels"] for t in targets], centers
    )  # (B, G, 4), (B, G), (B, G, 2), (B, G)
    assigner = assigner or DynamicSoftLabelAssigner()
    result = assigner(cls_logits.detach(), boxes.detach(), priors, gt_boxes, gt_labels, gt_valid, gt_centers)

    avg_factor = normaliser(result.soft_targets.sum())
    loss_cls = quality_focal_loss(
        cls_logits.reshape(b * n, c), result.labels.reshape(-1), result.soft_targets.reshape(-1)
    ).sum() / avg_factor  # (B*N, C) -> scalar

    pos_image, pos_prior = result.pos_mask.nonzero(as_tuple=True)  # (K,), (K,)
    pos_gt = result.gt_index[pos_image, pos_prior]  # (K,)
    weights = result.soft_targets[pos_image, pos_prior]  # (K,)
    if len(pos_prior):
        per_box = giou_loss(boxes[pos_image, pos_prior], gt_boxes[pos_image, pos_gt]) * weights
        loss_bbox = per_box.sum() / normaliser(weights.sum())
    else:
        loss_bbox = distances.sum() * 0  # zero, but still connected to the graph
    losses = dict(loss_cls=CLS_WEIGHT * loss_cls, loss_bbox=BBOX_WEIGHT * loss_bbox)
    if with_mask:
        losses["loss_mask"] = MASK_WEIGHT * mask_loss(outputs, targets, result, priors, pos_image, pos_prior,
                                                     mask_steps)
    losses["num_pos"] = len(pos_prior)
    return losses


def mask_loss(outputs: HeadOutput, targets: list[dict], result: AssignResult, priors: Tensor,
              pos_image: Tensor, pos_prior: Tensor, steps: MaskLossSteps = PLAIN_MASK_LOSS) -> Tensor:
    """Dice loss of the positives' masks on stride-4 maps, divided by the number of positives (>= 1)."""
    mask_feats = outputs.mask_feats.float()
    if len(pos_prior) == 0:  # zero, but every mask parameter still gets a (zero) gradient
        return (mask_feats.sum() + sum(k.sum() for k in outputs.kernel_preds).float()) * 0
    kernels = flatten_levels(outputs.kernel_preds)[pos_image, pos_prior].float()  # (K, 169)
    logits = steps.mask_logits(mask_feats, kernels, priors[pos_prior], pos_image)  # (K, H/8, W/8)
    logits = steps.upsample(logits)  # (K, H/4, W/4)
    start = MASK_LOSS_STRIDE // 2
    gt_masks = torch.cat([
        t["masks"][:, start::MASK_LOSS_STRIDE, start::MASK_LOSS_STRIDE].contiguous()[
            result.gt_index[i, pos_prior[pos_image == i]]]
        for i, t in enumerate(targets)
    ])  # (K, H/4, W/4): each image's G masks sliced to stride 4, then each positive's GT (pos_image is sorted)
    return steps.dice(logits, gt_masks).sum() / normaliser(logits.new_tensor(float(len(pos_prior))))
