"""The RTMDet heads: shared convs with separate BN per level, and the instance-mask parts (chapter 03).

``RTMDetSepBNHead`` (detection) runs two towers of 3x3 convs on each pyramid level. The tower **conv
weights are shared** across levels (one ``nn.Conv2d`` object per tower layer, used on every level) while
**BatchNorm is separate** per level, because statistics differ between strides. The 1x1 predictors are
per level.

``RTMDetInsSepBNHead`` (instance segmentation) adds a per-level kernel tower predicting the 169 dynamic
parameters and the ``MaskFeatModule`` making 8 prototype maps at stride 8. Faithful to the reference it has
**no box tower of its own**: box regression runs the cls tower a second time (mmdetection issue #9835).
Because it is a second pass, in training the cls tower's BN running statistics get two momentum updates per
step (effective momentum 1 - 0.9**2 = 0.19). ``separate_reg_tower=True`` builds the "fixed" head instead.
(The second pass computes the same features as the first; ``rtmdet_lesson.fast.cls_tower`` reuses them.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rtmdet_lesson.blocks import BN_EPS, BN_MOMENTUM, ConvBNAct
from rtmdet_lesson.dynamic_mask import NUM_DYNAMIC_PARAMS, NUM_PROTOTYPES

PRIOR_PROB = 0.01  # initial foreground probability of the classifier


@dataclass
class HeadOutput:
    """Raw head outputs, one tensor per level in the reference's (B, C, H_l, W_l) layout. Chapter 03.

    cls_scores: ``[(B, C, H_l, W_l)]`` class logits (sigmoid, no background logit).
    bbox_preds: ``[(B, 4, H_l, W_l)]`` distances (left, top, right, bottom) from the prior point, in pixels.
    kernel_preds: ``[(B, 169, H_l, W_l)]`` dynamic mask parameters, or None for detection.
    mask_feats: ``(B, 8, H/8, W/8)`` prototypes, or None for detection.
    """

    cls_scores: list[torch.Tensor]
    bbox_preds: list[torch.Tensor]
    kernel_preds: list[torch.Tensor] | None = None
    mask_feats: torch.Tensor | None = None


class SharedConvTower(nn.Module):
    """A stack of 3x3 conv -> BN -> SiLU whose convs are shared by all levels and whose BNs are not. Chapter 03.

    ``convs[i]`` is one ``nn.Conv2d`` used on every level; ``norms[level][i]`` is that level's BN.
    ``(B, C_in, H_l, W_l) -> (B, C_feat, H_l, W_l)``.
    """

    def __init__(self, in_channels: int, feat_channels: int, num_convs: int, num_levels: int):
        super().__init__()
        chans = [in_channels] + [feat_channels] * num_convs
        self.convs = nn.ModuleList(
            [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False) for i in range(num_convs)]
        )
        self.norms = nn.ModuleList(
            [
                nn.ModuleList(
                    [nn.BatchNorm2d(feat_channels, eps=BN_EPS, momentum=BN_MOMENTUM) for _ in range(num_convs)]
                )
                for _ in range(num_levels)
            ]
        )

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms[level], strict=True):
            x = F.silu(norm(conv(x)))
        return x


def _init_head_weights(head: nn.Module, reg_bias: float) -> None:
    """Reference head init: every conv normal(0, 0.01) with bias 0; cls bias -log(99); reg bias as given."""
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for rtm_cls, rtm_reg in zip(head.rtm_cls, head.rtm_reg, strict=True):
        nn.init.constant_(rtm_cls.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        nn.init.constant_(rtm_reg.bias, reg_bias)


class RTMDetSepBNHead(nn.Module):
    """The detection head. Chapter 03 builds this.

    Box distances are ``exp(raw) * stride`` if ``exp_on_reg`` (official m, l, x) else ``raw * stride``
    (official tiny, s: no exp, so early distances can be negative).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int | None = None,
        stacked_convs: int = 2,
        strides: tuple[int, ...] = (8, 16, 32),
        exp_on_reg: bool = False,
        separate_reg_tower: bool = True,
    ):
        super().__init__()
        feat = feat_channels or in_channels
        self.num_classes, self.strides, self.exp_on_reg = num_classes, tuple(strides), exp_on_reg
        levels = len(strides)
        self.cls_tower = SharedConvTower(in_channels, feat, stacked_convs, levels)
        self.reg_tower = SharedConvTower(in_channels, feat, stacked_convs, levels) if separate_reg_tower else None
        self.rtm_cls = nn.ModuleList([nn.Conv2d(feat, num_classes, 1) for _ in range(levels)])
        self.rtm_reg = nn.ModuleList([nn.Conv2d(feat, 4, 1) for _ in range(levels)])
        _init_head_weights(self, reg_bias=0.0)

    def reg_features(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Box-branch features ``(B, feat, H_l, W_l)``: the reg tower, or without one a second pass through the cls
        tower (the reference)."""
        return self.reg_tower(x, level) if self.reg_tower is not None else self.cls_tower(x, level)

    def tower_features(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, feat, H_l, W_l)`` of the class branch and of the box branch on one level."""
        return self.cls_tower(x, level), self.reg_features(x, level)

    def distances(self, reg: torch.Tensor, stride: int) -> torch.Tensor:
        """Raw box outputs -> (left, top, right, bottom) distances in pixels."""
        return (reg.exp() if self.exp_on_reg else reg) * stride

    def level_outputs(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(B, C, H_l, W_l)`` and box distances ``(B, 4, H_l, W_l)`` of one level."""
        cls_feats, reg_feats = self.tower_features(x, level)  # (B, feat, H_l, W_l) each
        cls_score = self.rtm_cls[level](cls_feats)  # (B, C, H_l, W_l)
        reg = self.rtm_reg[level](reg_feats)  # (B, 4, H_l, W_l)
        return cls_score, self.distances(reg, self.strides[level])

    def forward(self, feats: list[torch.Tensor]) -> HeadOutput:
        cls_scores, bbox_preds = zip(*[self.level_outputs(x, level) for level, x in enumerate(feats)], strict=True)
        return HeadOutput(list(cls_scores), list(bbox_preds))


class MaskFeatModule(nn.Module):
    """One prototype generator fed by all levels. Chapter 03 builds this.

    Bilinear-resize P4, P5 to P3's size, concat [P3, P4, P5], 1x1 fusion conv (bias, no BN/act),
    ``stacked_convs`` x 3x3 ConvBNAct, 1x1 projection (bias) to 8 prototypes.
    ``[P3, P4, P5] -> (B, 8, H/8, W/8)``.
    """

    def __init__(self, in_channels: int, feat_channels: int, stacked_convs: int = 4, num_levels: int = 3):
        super().__init__()
        self.fusion_conv = nn.Conv2d(num_levels * in_channels, feat_channels, 1)
        self.stacked_convs = nn.Sequential(*[ConvBNAct(feat_channels, feat_channels, 3) for _ in range(stacked_convs)])
        self.projection = nn.Conv2d(feat_channels, NUM_PROTOTYPES, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        resized = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        x = self.fusion_conv(torch.cat(resized, dim=1))  # (B, feat, H/8, W/8)
        return self.projection(self.stacked_convs(x))  # (B, 8, H/8, W/8)


class RTMDetInsSepBNHead(RTMDetSepBNHead):
    """The instance-segmentation head. Chapter 03 builds this.

    Box distances are ``ReLU(raw) * stride`` (predictor bias starts at 1). With the default
    ``separate_reg_tower=False`` the box branch reuses the cls tower (reference behaviour, see module doc).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int | None = None,
        stacked_convs: int = 2,
        strides: tuple[int, ...] = (8, 16, 32),
        separate_reg_tower: bool = False,
    ):
        super().__init__(num_classes, in_channels, feat_channels, stacked_convs, strides, False, separate_reg_tower)
        feat = feat_channels or in_channels
        chans = [in_channels] + [feat] * stacked_convs
        self.kernel_convs = nn.ModuleList(
            [nn.Sequential(*[ConvBNAct(chans[i], chans[i + 1], 3) for i in range(stacked_convs)]) for _ in strides]
        )
        self.rtm_kernel = nn.ModuleList([nn.Conv2d(feat, NUM_DYNAMIC_PARAMS, 1) for _ in strides])
        self.mask_head = MaskFeatModule(in_channels, feat, stacked_convs=4, num_levels=len(strides))
        _init_head_weights(self, reg_bias=1.0)  # again, now over the new layers too, with the Ins reg bias

    def distances(self, reg: torch.Tensor, stride: int) -> torch.Tensor:
        return F.relu(reg) * stride

    def forward(self, feats: list[torch.Tensor]) -> HeadOutput:
        mask_feats = self.mask_head(feats)  # (B, 8, H/8, W/8)
        det = super().forward(feats)  # per level (B, C, H_l, W_l) logits and (B, 4, H_l, W_l) distances
        kernel_preds = [self.rtm_kernel[level](self.kernel_convs[level](x)) for level, x in enumerate(feats)]
        return HeadOutput(det.cls_scores, det.bbox_preds, kernel_preds, mask_feats)  # kernels (B, 169, H_l, W_l)
