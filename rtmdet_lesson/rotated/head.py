"""The RTMDet-R head: the detection SepBN head plus one 1x1 angle conv per level (chapter 10).

The RTMDet paper (arXiv 2212.07784) turns RTMDet into a rotated detector by adding a 1x1 convolution to the
regression branch that predicts the rotation angle. mmrotate's ``RotatedRTMDetSepBNHead`` does exactly that:
the head of ``head.RTMDetSepBNHead`` (cls and reg towers whose convs are shared across levels, a BN per level)
with a per-level ``rtm_ang`` conv on the reg tower's features giving one channel, the angle in radians
(``PseudoAngleCoder``: no encoding; ``scale_angle=False``: no learnable scale). It is initialised like the
other predictors, weights normal(0, 0.01) and bias 0, so every box starts at angle ~0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rtmdet_lesson.head import HeadOutput, RTMDetSepBNHead

ANGLE_CHANNELS = 1  # PseudoAngleCoder's encode_size: the angle itself


@dataclass
class RotatedHeadOutput(HeadOutput):
    """``HeadOutput`` plus ``angle_preds``: ``[(B, 1, H_l, W_l)]`` angles in radians, one tensor per level.

    ``bbox_preds`` are the distances (left, top, right, bottom) in pixels, measured in each box's own rotated
    frame (``rotated.coder``). Chapter 10.
    """

    angle_preds: list[torch.Tensor] | None = None


class RotatedRTMDetSepBNHead(RTMDetSepBNHead):
    """The rotated detection head. Chapter 10 builds this.

    ``feats [(B, C_in, H_l, W_l)] -> RotatedHeadOutput`` with class logits ``(B, C, H_l, W_l)``, distances
    ``(B, 4, H_l, W_l)`` (``exp(raw) * stride`` if ``exp_on_reg`` else ``raw * stride``) and angles
    ``(B, 1, H_l, W_l)``. The box tower is always its own (the detection head's ``separate_reg_tower``).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int | None = None,
        stacked_convs: int = 2,
        strides: tuple[int, ...] = (8, 16, 32),
        exp_on_reg: bool = False,
    ):
        super().__init__(num_classes, in_channels, feat_channels, stacked_convs, strides, exp_on_reg,
                         separate_reg_tower=True)
        feat = feat_channels or in_channels
        self.rtm_ang = nn.ModuleList([nn.Conv2d(feat, ANGLE_CHANNELS, 1) for _ in strides])
        for conv in self.rtm_ang:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def level_outputs(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(B, C, H_l, W_l)``, distances ``(B, 4, H_l, W_l)`` and angles ``(B, 1, H_l, W_l)`` of one level."""
        cls_feats, reg_feats = self.tower_features(x, level)  # (B, feat, H_l, W_l) each
        distances = self.distances(self.rtm_reg[level](reg_feats), self.strides[level])  # (B, 4, H_l, W_l)
        return self.rtm_cls[level](cls_feats), distances, self.rtm_ang[level](reg_feats)

    def forward(self, feats: list[torch.Tensor]) -> RotatedHeadOutput:
        per_level = [self.level_outputs(x, level) for level, x in enumerate(feats)]
        cls_scores, bbox_preds, angle_preds = (list(outputs) for outputs in zip(*per_level, strict=True))
        return RotatedHeadOutput(cls_scores, bbox_preds, angle_preds=angle_preds)
