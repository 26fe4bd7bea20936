"""The building blocks of CSPNeXt and its PAFPN (chapter 01).

Every layer name below matches the reference's state_dict names (``conv``, ``bn``, ``depthwise_conv``,
``main_conv``, ...), so official weights load into these blocks without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1  # PyTorch defaults: the configs pass SyncBN without momentum/eps (configs/rtmdet), not 0.03/1e-3
BN_EPS = 1e-5


class ConvBNAct(nn.Module):
    """Conv (no bias: BN follows) -> BatchNorm -> SiLU; padding ``k // 2``. Chapter 01 builds this.

    ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k ConvBNAct, then pointwise 1x1 ConvBNAct. Chapter 01 builds this.

    BN + SiLU sit after **both** convs (a common mistake puts a single BN after the pair).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.depthwise_conv = ConvBNAct(in_channels, in_channels, kernel_size, groups=in_channels)
        self.pointwise_conv = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class CSPNeXtBlock(nn.Module):
    """3x3 ConvBNAct, then a depthwise-separable 5x5; residual add if asked and shapes allow. Chapter 01.

    No activation after the add.
    """

    def __init__(self, in_channels: int, out_channels: int, add_identity: bool = True):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3)  # hidden width = out (expansion 1.0)
        self.conv2 = DepthwiseSeparableConv(out_channels, out_channels, 5)
        self.add_identity = add_identity and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class ChannelAttention(nn.Module):
    """Global average pool -> 1x1 conv with bias (no reduction) -> Hardsigmoid -> rescale channels. Chapter 01.

    ``(B, C, H, W) -> (B, C, H, W)``: each channel scaled by a weight in [0, 1] computed from all channels' means.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)
        self.act = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * self.act(self.fc(pooled))


class CSPLayer(nn.Module):
    """Cross-stage-partial layer: two 1x1 paths, n blocks on the main one, concat, attention, 1x1. Chapter 01.

    ``main = blocks(main_conv(x))``, ``short = short_conv(x)``, ``out = final_conv(attn(cat[main, short]))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        add_identity: bool = True,
        channel_attention: bool = False,
        expand_ratio: float = 0.5,
    ):
        super().__init__()
        mid = int(out_channels * expand_ratio)
        self.main_conv = ConvBNAct(in_channels, mid, 1)
        self.short_conv = ConvBNAct(in_channels, mid, 1)
        self.final_conv = ConvBNAct(2 * mid, out_channels, 1)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(mid, mid, add_identity) for _ in range(num_blocks)])
        self.attention = ChannelAttention(2 * mid) if channel_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.blocks(self.main_conv(x)), self.short_conv(x)], dim=1)  # (B, 2*mid, H, W)
        if self.attention is not None:
            out = self.attention(out)
        return self.final_conv(out)


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: 1x1 halving, parallel 5/9/13 max-pools, concat [x, p5, p9, p13], 1x1. Chapter 01.

    Parallel pools (SPP), numerically equal to three chained 5x5 pools (SPPF) with the same concat order.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        mid = in_channels // 2
        self.conv1 = ConvBNAct(in_channels, mid, 1)
        self.poolings = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes])
        self.conv2 = ConvBNAct(mid * (len(kernel_sizes) + 1), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.poolings], dim=1))  # (B, 4*mid, H, W)


def init_backbone_neck_weights(module: nn.Module) -> None:
    """Reference init of backbone and neck: Kaiming-uniform (a = sqrt 5) convs with zero bias; BN 1 and 0.

    The weight distribution equals PyTorch's default conv init; only the biases differ (zero here).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=5**0.5, mode="fan_in", nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
