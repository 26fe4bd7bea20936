"""CSPNeXt-PAFPN, the neck of RTMDet (chapter 02).

A top-down path (1x1 reduce, nearest x2 upsample, concat, CSPLayer) followed by a bottom-up path
(3x3 stride-2 conv, concat, CSPLayer), then a 3x3 ConvBNAct per level to ``out_channels``.

Subtle point kept from the reference: the bottom-up path concatenates with the **reduced** laterals R4 and
R5 (outputs of the 1x1 reduce convs), not with the top-down output T4 or the raw C5.
"""

from __future__ import annotations

import torch
from torch import nn

from rtmdet_lesson.blocks import ConvBNAct, CSPLayer, init_backbone_neck_weights


class CSPNeXtPAFPN(nn.Module):
    """The neck. Chapter 02 builds this.

    ``[C3 (B, c3, H/8, W/8), C4 (B, c4, H/16, W/16), C5 (B, c5, H/32, W/32)]``
    ``-> [P3, P4, P5]``, each with ``out_channels`` channels at strides 8, 16, 32.
    """

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int, num_csp_blocks: int = 3):
        super().__init__()
        c3, c4, c5 = in_channels

        def csp(c_in: int, c_out: int) -> CSPLayer:  # no residual, no channel attention in the neck
            return CSPLayer(c_in, c_out, num_csp_blocks, add_identity=False, channel_attention=False)

        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.reduce_layers = nn.ModuleList([ConvBNAct(c5, c4, 1), ConvBNAct(c4, c3, 1)])
        self.top_down_blocks = nn.ModuleList([csp(2 * c4, c4), csp(2 * c3, c3)])
        self.downsamples = nn.ModuleList([ConvBNAct(c3, c3, 3, stride=2), ConvBNAct(c4, c4, 3, stride=2)])
        self.bottom_up_blocks = nn.ModuleList([csp(2 * c3, c4), csp(2 * c4, c5)])
        self.out_convs = nn.ModuleList([ConvBNAct(c, out_channels, 3) for c in (c3, c4, c5)])
        init_backbone_neck_weights(self)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        # top-down: coarse semantics flow to fine maps
        r5 = self.reduce_layers[0](c5)  # (B, c4, H/32, W/32)
        t4 = self.top_down_blocks[0](torch.cat([self.upsample(r5), c4], dim=1))  # (B, c4, H/16, W/16)
        r4 = self.reduce_layers[1](t4)  # (B, c3, H/16, W/16)
        t3 = self.top_down_blocks[1](torch.cat([self.upsample(r4), c3], dim=1))  # (B, c3, H/8, W/8)
        # bottom-up: fine localisation flows back to coarse maps, joined with the reduced laterals
        n4 = self.bottom_up_blocks[0](torch.cat([self.downsamples[0](t3), r4], dim=1))  # (B, c4, H/16, W/16)
        n5 = self.bottom_up_blocks[1](torch.cat([self.downsamples[1](n4), r5], dim=1))  # (B, c5, H/32, W/32)
        return [conv(x) for conv, x in zip(self.out_convs, (t3, n4, n5), strict=True)]
