"""CSPNeXt, the backbone of RTMDet (chapter 01).

A 3-conv stem (stride 2), then four stages, each a stride-2 3x3 ConvBNAct followed by a CSPLayer
(stage 4 puts an SPP block in between). Stages 2, 3, 4 feed the neck at strides 8, 16, 32.
Sizes come from two factors applied to the P5 arch setting below.
"""

from __future__ import annotations

import torch
from torch import nn

from rtmdet_lesson.blocks import ConvBNAct, CSPLayer, SPPBottleneck, init_backbone_neck_weights

# (in, out, num_blocks, add_identity, use_spp) of stages 1-4 before scaling (mmdetection's CSPNeXt.arch_settings['P5'],
# mmdet/models/backbones/cspnext.py).
ARCH_P5 = (
    (64, 128, 3, True, False),
    (128, 256, 6, True, False),
    (256, 512, 6, True, False),
    (512, 1024, 3, False, True),
)


def scaled_channels(channels: int, widen_factor: float) -> int:
    """``int(c * widen_factor)``: the reference's width rule."""
    return int(channels * widen_factor)


def scaled_depth(num_blocks: int, deepen_factor: float) -> int:
    """``max(round(n * deepen_factor), 1)`` with Python's round: the reference's depth rule."""
    return max(round(num_blocks * deepen_factor), 1)


class CSPNeXt(nn.Module):
    """The CSPNeXt backbone. Chapter 01 builds this.

    ``(B, 3, H, W) -> [C3 (B, c3, H/8, W/8), C4 (B, c4, H/16, W/16), C5 (B, c5, H/32, W/32)]``
    with ``(c3, c4, c5) = self.out_channels``.
    """

    def __init__(self, deepen_factor: float = 1.0, widen_factor: float = 1.0, channel_attention: bool = True):
        super().__init__()
        stem_mid = int(64 * widen_factor // 2)  # floor division happens before int, as in the reference
        stem_out = scaled_channels(64, widen_factor)
        self.stem = nn.Sequential(
            ConvBNAct(3, stem_mid, 3, stride=2),
            ConvBNAct(stem_mid, stem_mid, 3),
            ConvBNAct(stem_mid, stem_out, 3),
        )
        for index, (c_in, c_out, n, add_identity, use_spp) in enumerate(ARCH_P5, start=1):
            c_in, c_out = scaled_channels(c_in, widen_factor), scaled_channels(c_out, widen_factor)
            layers = [ConvBNAct(c_in, c_out, 3, stride=2)]
            if use_spp:
                layers.append(SPPBottleneck(c_out, c_out))
            layers.append(CSPLayer(c_out, c_out, scaled_depth(n, deepen_factor), add_identity, channel_attention))
            self.add_module(f"stage{index}", nn.Sequential(*layers))
        self.out_channels = tuple(scaled_channels(a[1], widen_factor) for a in ARCH_P5[1:])
        init_backbone_neck_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stage1(self.stem(x))  # stride 4
        c3 = self.stage2(x)  # stride 8
        c4 = self.stage3(c3)  # stride 16
        c5 = self.stage4(c4)  # stride 32
        return [c3, c4, c5]
