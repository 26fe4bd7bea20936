"""The dynamic soft-label assigner for rotated boxes (chapter 10).

RTMDet-R keeps RTMDet's assigner (``assigner.DynamicSoftLabelAssigner``: top-k 13, soft centre radius 3,
IoU weight 3) and changes only what "inside" and "overlap" mean, as mmdetection's assigner does when handed
mmrotate's ``RotatedBoxes`` with ``iou_calculator=dict(type='RBboxOverlaps2D')``:

- candidates are the priors inside a GT's **rotated** box, by ``RotatedBoxes.find_inside_points`` (eps 0.01:
  a point within 0.01 px of the boundary is outside);
- the IoU of a prediction with a GT is the rotated IoU, after clamping both boxes' width and height to at
  least 1e-3, as mmrotate's ``rbbox_overlaps`` does (a predicted side that came out negative counts as 1e-3);
- the soft centre prior measures from the GT box's centre.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtmdet_lesson.assigner import DynamicSoftLabelAssigner
from rtmdet_lesson.rotated.geometry import points_in_rboxes
from rtmdet_lesson.rotated.iou import rotated_iou

INSIDE_EPS = 0.01  # RotatedBoxes.find_inside_points' default
MIN_SIDE = 1e-3  # rbbox_overlaps clamps w and h to this before computing IoU


def clamp_sides(boxes: Tensor, min_side: float = MIN_SIDE) -> Tensor:
    """Rotated boxes (..., 5) with w and h clamped to at least ``min_side``."""
    return torch.cat([boxes[..., :2], boxes[..., 2:4].clamp(min=min_side), boxes[..., 4:]], dim=-1)


class RotatedDynamicSoftLabelAssigner(DynamicSoftLabelAssigner):
    """RTMDet's assigner on rotated boxes (cx, cy, w, h, angle). Chapter 10 builds this.

    Called like the parent with ``pred_boxes`` (B, N, 5), ``gt_boxes`` (B, G, 5) and ``gt_centers`` the GT
    boxes' centres ``gt_boxes[..., :2]``.
    """

    def candidate_mask(self, points: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
        """points (N, 2), gt_boxes (B, G, 5), gt_valid (B, G) -> (B, N) bool: inside some valid rotated GT."""
        inside = torch.stack([points_in_rboxes(points, boxes, INSIDE_EPS) for boxes in gt_boxes])  # (B, N, G)
        return (inside & gt_valid[:, None, :]).any(dim=2)

    def pairwise_iou(self, boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """(B, M, 5), (B, G, 5) -> (B, M, G) rotated IoU, sides clamped to >= 1e-3 first."""
        return torch.stack([rotated_iou(clamp_sides(p), clamp_sides(g)) for p, g in zip(boxes, gt_boxes, strict=True)])
