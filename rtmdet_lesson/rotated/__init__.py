"""RTMDet-R: rotated object detection, the third model of the RTMDet paper (arXiv 2212.07784), chapter 10.

    from rtmdet_lesson.rotated import rotated_iou, rotated_nms
    rotated_iou(a, b)                  # (N, 5), (M, 5) -> (N, M); aligned=True -> (N,)
    rotated_nms(boxes, scores, 0.1)    # kept indices, highest score first

Boxes are (cx, cy, w, h, angle) with the angle in radians (le90: w the longer side, angle in [-pi/2, pi/2)).
"""

from rtmdet_lesson.rotated.geometry import (
    corners_to_rbox,
    norm_angle_le90,
    points_in_rboxes,
    rbox_area,
    rbox_to_corners,
    regularize_le90,
)
from rtmdet_lesson.rotated.iou import intersection_area, rotated_iou
from rtmdet_lesson.rotated.nms import batched_rotated_nms, rotated_nms

__all__ = [
    "batched_rotated_nms",
    "corners_to_rbox",
    "intersection_area",
    "norm_angle_le90",
    "points_in_rboxes",
    "rbox_area",
    "rbox_to_corners",
    "regularize_le90",
    "rotated_iou",
    "rotated_nms",
]
