"""RTMDet-R: RTMDet's backbone and neck with the rotated head (chapter 10).

The official sizes are mmrotate's ``configs/rotated_rtmdet/rotated_rtmdet_{tiny,s,m,l}-3x-dota.py``: the
CSPNeXt backbone and PAFPN neck of RTMDet at the same depth and width factors, ``RotatedRTMDetSepBNHead``
with 15 classes (DOTA v1.0), ``exp_on_reg`` False for tiny and s and True for m and l (the l config sets it
and m inherits it), trained and tested on 1024 x 1024 images. The presets are ``presets.ROTATED_PRESETS``.
"""

from __future__ import annotations

import torch

from rtmdet_lesson.backbone import scaled_channels
from rtmdet_lesson.model import RTMDet, check_input
from rtmdet_lesson.rotated.head import RotatedHeadOutput, RotatedRTMDetSepBNHead

DOTA_CLASSES = 15
DOTA_INPUT_SIZE = 1024


class RTMDetR(RTMDet):
    """RTMDet for rotated boxes. Chapter 10 builds this.

    The same arguments as ``RTMDet`` (``with_mask`` must stay False and ``separate_reg_tower`` is ignored:
    the rotated head always has its own box tower). ``forward(x (B, 3, H, W)) -> RotatedHeadOutput`` with
    per-level ``cls_scores``, ``bbox_preds`` (distances in pixels, in each box's frame) and ``angle_preds``
    (radians).
    """

    def __init__(self, num_classes: int = DOTA_CLASSES, deepen_factor: float = 1.0, widen_factor: float = 1.0,
                 with_mask: bool = False, exp_on_reg: bool = False, separate_reg_tower: bool = True,
                 preset: str = "custom", class_names: list[str] | None = None, input_size: int = DOTA_INPUT_SIZE):
        if with_mask:
            raise ValueError("RTMDet-R has no mask branch; build it with with_mask=False (the default)")
        super().__init__(num_classes, deepen_factor, widen_factor, with_mask=False, exp_on_reg=exp_on_reg,
                         separate_reg_tower=True, preset=preset, class_names=class_names, input_size=input_size)
        self.head = RotatedRTMDetSepBNHead(num_classes, scaled_channels(256, widen_factor), strides=self.strides,
                                           exp_on_reg=exp_on_reg)

    def forward(self, x: torch.Tensor) -> RotatedHeadOutput:
        check_input(x)
        return self.head(self.neck(self.backbone(x)))

    def loss(self, x: torch.Tensor, targets: list[dict]) -> dict:
        """Training losses of a batch: targets are dicts with ``rboxes`` (G, 5) (cx, cy, w, h, angle in radians)
        and ``labels`` (G,) int64; see ``rotated.criterion.compute_rotated_losses``."""
        from rtmdet_lesson.rotated.criterion import compute_rotated_losses

        return compute_rotated_losses(self(x), targets, image_size=tuple(x.shape[-2:]))

    def predict(self, images, **kwargs):
        """Rotated boxes on raw images of any size: ``rotated.predict.predict_rotated(self, images, **kwargs)``,
        one ``RotatedInstances`` (``.rboxes`` (K, 5), ``.scores``, ``.labels``) per image, original pixels."""
        from rtmdet_lesson.rotated.predict import predict_rotated

        return predict_rotated(self, images, **kwargs)
