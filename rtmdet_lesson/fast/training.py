"""Training rewrites that keep the computation: same outputs, gradients and statistics, less time (chapter 09).

``prepare_for_training(model, channels_last, amp_dtype, single_cls_pass)`` swaps them into a model, in place,
before the optimizer is built (``train`` calls it for every run):

- always, for an RTMDet-Ins: the mask loss's faster steps (``fast.losses.FAST_MASK_LOSS``), through ``model.loss``;
- ``single_cls_pass``: the Ins head's cls tower once a step (``fast.cls_tower``);
- ``channels_last``: NHWC memory from the stem's last conv on. The stem's first two convs, on few channels,
  stay NCHW (their BN and SiLU backward are faster so) and ``ToChannelsLast`` hands them an NCHW gradient. The
  blocks that concatenate channels or pool over pixels are swapped for versions whose backward keeps the
  channels-last layout (``cat_channels``, ``PixelMean``);
- CPU bf16 autocast: depthwise convs in fp32 (``DepthwiseConvFp32``).

``keep_freed_memory()`` is a process setting (glibc's allocator) that ``train`` makes for every run.
Weights and state_dict keys are unchanged; ``tests/test_speed.py`` checks each swap against the plain model.
"""

from __future__ import annotations

import ctypes
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

from rtmdet_lesson import criterion
from rtmdet_lesson.blocks import ChannelAttention, ConvBNAct, CSPLayer, SPPBottleneck
from rtmdet_lesson.fast.cls_tower import use_one_cls_pass
from rtmdet_lesson.fast.losses import FAST_MASK_LOSS
from rtmdet_lesson.head import MaskFeatModule
from rtmdet_lesson.model import RTMDet
from rtmdet_lesson.neck import CSPNeXtPAFPN


class CatChannels(torch.autograd.Function):
    """``torch.cat(tensors, dim=1)`` whose backward gives each input a contiguous channels-last gradient.

    The gradient of a concatenation is a slice of the output's gradient. In channels-last memory a channel slice
    is strided (the other inputs' channels sit between its values), and SiLU and BN backward on such a slice are
    slower than one copy to contiguous memory. NCHW slices are already contiguous per image, so those stay views.
    """

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.sizes = [t.shape[1] for t in tensors]
        return torch.cat(tensors, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = grad.split(ctx.sizes, dim=1)  # views: in channels-last, every pixel's channels stay interleaved
        if not grad.is_contiguous() and grad.is_contiguous(memory_format=torch.channels_last):
            parts = tuple(part.contiguous(memory_format=torch.channels_last) for part in parts)
        return parts


def cat_channels(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, dim=1)``: ``[(B, C_i, H, W)] -> (B, sum C_i, H, W)``, with ``CatChannels``'s backward."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return CatChannels.apply(*tensors)
    return torch.cat(tensors, dim=1)


class PixelMean(torch.autograd.Function):
    """Per-image, per-channel mean over the pixels: ``(B, C, H, W) -> (B, C, 1, 1)``, in at least float32.

    Its gradient is handed back as a broadcast view in ``x``'s dtype. Autograd's own writes a new NCHW tensor, and
    adding that to the channels-last gradient ``x`` gets from its other use is slower than the add itself.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return x.mean(dim=(2, 3), keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return (grad / (ctx.shape[2] * ctx.shape[3])).to(ctx.dtype).expand(ctx.shape)


# The lesson blocks with torch.cat -> cat_channels and the mean -> PixelMean; nothing else changes.
class ChannelsLastCSPLayer(CSPLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = cat_channels([self.blocks(self.main_conv(x)), self.short_conv(x)])  # (B, 2*mid, H, W)
        if self.attention is not None:
            out = self.attention(out)
        return self.final_conv(out)


class ChannelsLastSPPBottleneck(SPPBottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(cat_channels([x] + [pool(x) for pool in self.poolings]))  # (B, 4*mid, H, W)


class ChannelsLastPAFPN(CSPNeXtPAFPN):
    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        r5 = self.reduce_layers[0](c5)  # (B, c4, H/32, W/32)
        t4 = self.top_down_blocks[0](cat_channels([self.upsample(r5), c4]))  # (B, c4, H/16, W/16)
        r4 = self.reduce_layers[1](t4)  # (B, c3, H/16, W/16)
        t3 = self.top_down_blocks[1](cat_channels([self.upsample(r4), c3]))  # (B, c3, H/8, W/8)
        n4 = self.bottom_up_blocks[0](cat_channels([self.downsamples[0](t3), r4]))  # (B, c4, H/16, W/16)
        n5 = self.bottom_up_blocks[1](cat_channels([self.downsamples[1](n4), r5]))  # (B, c5, H/32, W/32)
        return [conv(x) for conv, x in zip(self.out_convs, (t3, n4, n5), strict=True)]


class ChannelsLastMaskFeatModule(MaskFeatModule):
    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        resized = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                for f in feats[1:]]
        x = self.fusion_conv(cat_channels(resized))  # (B, feat, H/8, W/8)
        return self.projection(self.stacked_convs(x))  # (B, 8, H/8, W/8)


class ChannelsLastAttention(ChannelAttention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = PixelMean.apply(x)  # (B, C, 1, 1)
        return x * self.act(self.fc(pooled.to(x.dtype)))


CHANNELS_LAST_BLOCKS = {CSPLayer: ChannelsLastCSPLayer, SPPBottleneck: ChannelsLastSPPBottleneck,
                        CSPNeXtPAFPN: ChannelsLastPAFPN, MaskFeatModule: ChannelsLastMaskFeatModule,
                        ChannelAttention: ChannelsLastAttention}


class DepthwiseConvFp32(nn.Conv2d):
    """A depthwise conv that leaves autocast and runs in fp32 (same parameters, same state_dict keys).

    On oneDNN CPUs the bf16 backward of a depthwise 5x5 conv is slower than the fp32 one (it has no bf16 kernel
    as fast as its fp32 one), and the forward is cheap either way, so fp32 wins in training.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class ToChannelsLast(torch.autograd.Function):
    """Identity that stores its output channels-last and hands back an NCHW gradient.

    ``x.contiguous(memory_format=torch.channels_last)`` would pass the channels-last gradient on as is, and the
    NCHW layers before it (the stem) would then mix layouts in their SiLU and BN backward, which is slower than
    one copy here.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    return tuple(ToChannelsLast.apply(a) for a in args)


# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD = 32 * 2**20  # blocks below this come from the heap and are reused; glibc's largest value
HEAP_TRIM_THRESHOLD = 2**30  # free heap kept at its top before any is handed back


def keep_freed_memory() -> bool:
    """Let this process reuse the memory of freed tensors instead of faulting fresh pages in.

    glibc serves blocks of a few MiB, a training step's activations, with ``mmap`` and unmaps them when they are
    freed; the next step maps them again and the kernel zeroes every 4 KiB page on first touch. Raising the mmap
    threshold to 32 MiB and the trim threshold to 1 GiB keeps those blocks in the heap for the next step. The cost
    is memory that is not handed back to the system. Returns False where the C library is not glibc (macOS,
    musl), which is left as it is.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the symbols the process already has, the C library's among them
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))


def fast_loss(model: nn.Module, x: torch.Tensor, targets: list[dict]) -> dict:
    """``RTMDet.loss`` with the mask loss's faster steps (``fast.losses.FAST_MASK_LOSS``)."""
    return criterion.compute_losses(model(x), targets, image_size=tuple(x.shape[-2:]), mask_steps=FAST_MASK_LOSS)


def prepare_for_training(model: nn.Module, channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                         single_cls_pass: bool = True) -> nn.Module:
    """Swap the training rewrites into ``model`` in place (module doc), before the optimizer is built. Chapter 09.

    Returns the model; its parameters, their order and its state_dict keys are unchanged.
    """
    if getattr(type(model), "loss", None) is RTMDet.loss and getattr(model, "with_mask", False):
        model.loss = types.MethodType(fast_loss, model)  # an instance attribute: this model only
    if single_cls_pass:
        use_one_cls_pass(model.head)
    device = next(model.parameters()).device
    if channels_last and device.type in ("cpu", "cuda"):
        model.to(memory_format=torch.channels_last)
        *narrow, last = model.backbone.stem
        for layer in narrow:  # the two 3x3 convs on 8 (course) to 32 (s) channels at half resolution
            layer.to(memory_format=torch.contiguous_format)
        last.register_forward_pre_hook(_to_channels_last)
        for module in model.modules():
            if type(module) in CHANNELS_LAST_BLOCKS:
                module.__class__ = CHANNELS_LAST_BLOCKS[type(module)]  # same object and parameters; new forward
    if device.type == "cpu" and amp_dtype == torch.bfloat16:
        for module in model.modules():
            conv = getattr(module, "conv", None)
            if isinstance(module, ConvBNAct) and conv.groups > 1 and type(conv) is nn.Conv2d:
                conv.__class__ = DepthwiseConvFp32  # same object, parameters and keys; only forward changes
    return model
