"""The inference fast path: an eval-only copy of the model that gives the same answers faster (chapter 09).

``optimize_for_inference(model, speed)`` applies pieces chosen by one switch; each level adds to the one before:

==========  ==================================================================================================
``plain``   the model as built (the reference's computation, op for op)
``exact``   BatchNorm folded into the conv before it; the Ins head's cls tower run once where the reference
            runs it twice (``fast.cls_tower``); channels-last memory on CPU and CUDA. Raw outputs equal
            ``plain`` to float rounding (tested to 1e-4 relative). **The default.**
``fast``    ``exact`` + bf16 autocast on CPUs with bf16 units (AMX / AVX-512 BF16) and on CUDA (fp16 on
            CUDA without bf16). Boxes and masks move by rounding; COCO AP stays within 0.01 (tested).
``compile`` ``fast`` + ``torch.compile`` (a one-off compile of a minute or more; needs a C++ compiler on CPU)
==========  ==================================================================================================

Every level also decodes masks with ``fast.mask_resize.decode_masks`` (the same masks as chapter 08's).
Weights and state_dict keys are unchanged.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from rtmdet_lesson.blocks import ConvBNAct
from rtmdet_lesson.fast.cls_tower import use_one_cls_pass
from rtmdet_lesson.fast.mask_resize import decode_masks
from rtmdet_lesson.head import HeadOutput, SharedConvTower
from rtmdet_lesson.model import check_input


@dataclass(frozen=True)
class SpeedOptions:
    """Which inference speed-ups to apply; ``SPEEDS`` names the useful combinations. Chapter 09."""

    fold_bn: bool = False  # conv + BN -> one conv with bias (eval statistics baked in)
    single_cls_pass: bool = False  # Ins head: reuse the cls tower's features for boxes instead of a second pass
    channels_last: bool = False  # NHWC memory: oneDNN and cuDNN run convs faster on it
    low_precision: bool = False  # bf16 (or fp16 on CUDA without bf16) autocast; outputs come back as fp32
    compile: bool = False  # torch.compile the network


SPEEDS = {
    "plain": SpeedOptions(),
    "exact": SpeedOptions(fold_bn=True, single_cls_pass=True, channels_last=True),
    "fast": SpeedOptions(fold_bn=True, single_cls_pass=True, channels_last=True, low_precision=True),
    "compile": SpeedOptions(fold_bn=True, single_cls_pass=True, channels_last=True, low_precision=True,
                            compile=True),
}


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One conv computing ``bn(conv(x))`` with BN's running statistics: ``w' = w * s``, ``b' = (b - mean) * s + beta``
    with ``s = gamma / sqrt(var + eps)`` per output channel. Chapter 09 derives it."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])  # (C_out, C_in/groups, k, k)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


class FoldedConvTower(nn.Module):
    """A ``SharedConvTower`` with BN folded in: the shared conv meets a different BN on each level, so folding
    gives each level its own conv. ``(B, C_in, H_l, W_l) -> (B, C_feat, H_l, W_l)``, as the tower. Chapter 09."""

    def __init__(self, tower: SharedConvTower):
        super().__init__()
        self.levels = nn.ModuleList(
            [nn.ModuleList([fold_conv_bn(conv, norm) for conv, norm in zip(tower.convs, norms, strict=True)])
             for norms in tower.norms]
        )

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        for conv in self.levels[level]:
            x = F.silu(conv(x))
        return x


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BN of an eval-mode model into its conv, in place; returns the model. Chapter 09."""
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (folding bakes in the running statistics); "
                         "call model.eval() first, or use optimize_for_inference, which works on a copy")
    for module in list(model.modules()):
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.modules.batchnorm._BatchNorm):  # + SyncBN
            module.conv, module.bn = fold_conv_bn(module.conv, module.bn), nn.Identity()
        for name, child in module.named_children():
            if isinstance(child, SharedConvTower):
                setattr(module, name, FoldedConvTower(child))
    return model


def low_precision_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision that is fast on ``device``, or None where fp32 is the fastest (then ``fast`` = ``exact``).

    CPUs: bf16 with AMX or AVX-512 BF16 units (without them bf16 is emulated and slower than fp32).
    CUDA: bf16 on GPUs with native bf16 (compute capability 8.0+: Ampere and newer), else fp16 (with a grad
    scaler in training). MPS and others: None. Chapter 09.
    """
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private torch helpers: probe gently
        has_units = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
        return torch.bfloat16 if has_units else None
    if device.type == "cuda":
        # cuDNN convolves in bf16 from compute capability 8.0 (Ampere) on; torch.cuda.is_bf16_supported() also
        # says yes on older GPUs (T4, V100) that only emulate bf16, where convolutions would fail or crawl
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return None


class InferenceModel(nn.Module):
    """An eval-only network behind the fast path: takes and returns what ``RTMDet`` does. Chapter 09.

    ``forward(x (B, 3, H, W) fp32) -> HeadOutput`` with fp32 contiguous outputs, whatever runs inside, so
    ``postprocess``, ``predict`` and ``evaluate_coco`` take it in place of the model. ``mask_decoder`` is the
    step that ``predict`` hands to ``postprocess`` for this model's masks.
    """

    mask_decoder = staticmethod(decode_masks)

    def __init__(self, network: nn.Module, options: SpeedOptions, amp_dtype: torch.dtype | None):
        super().__init__()
        self.network, self.options, self.amp_dtype = network, options, amp_dtype
        self.run = torch.compile(network) if options.compile else network
        for name in ("num_classes", "with_mask", "preset", "input_size", "class_names", "strides", "settings"):
            setattr(self, name, getattr(network, name, None))
        super().train(False)

    def train(self, mode: bool = True) -> InferenceModel:
        if mode:
            raise RuntimeError("an InferenceModel is for inference only (BN is folded); train the original model")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        check_input(x)
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.run(x)

        def fp32(tensors):
            return None if tensors is None else [t.float().contiguous() for t in tensors]

        masks = None if out.mask_feats is None else out.mask_feats.float().contiguous()
        return HeadOutput(fp32(out.cls_scores), fp32(out.bbox_preds), fp32(out.kernel_preds), masks)

    def predict(self, images, **kwargs):
        """Instances on raw images (chapter 08's ``predict``, on this faster network)."""
        from rtmdet_lesson.predict import predict

        return predict(self, images, **kwargs)


def optimize_for_inference(model: nn.Module, speed: str | SpeedOptions = "exact",
                           device: torch.device | str | None = None) -> InferenceModel:
    """An eval-only copy of ``model`` sped up by ``speed`` (see the module doc); the model is not changed.

    ``speed`` is ``"plain"``, ``"exact"`` (default: same answers), ``"fast"`` (reduced precision),
    ``"compile"`` or a ``SpeedOptions``. ``device`` defaults to the model's. Chapter 09 measures each piece.
    """
    if isinstance(speed, str):
        if speed not in SPEEDS:
            raise ValueError(f"unknown speed {speed!r}; use one of {', '.join(SPEEDS)} or a SpeedOptions")
        speed = SPEEDS[speed]
    if not isinstance(speed, SpeedOptions):
        raise ValueError(f"speed must be a name from SPEEDS or a SpeedOptions, got {type(speed).__name__}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    network = copy.deepcopy(model).to(device).eval()
    if speed.fold_bn:
        fold_batchnorm(network)
    if speed.single_cls_pass and hasattr(network, "head"):
        use_one_cls_pass(network.head)
    if speed.channels_last and device.type in ("cpu", "cuda"):
        network = network.to(memory_format=torch.channels_last)
    else:
        speed = replace(speed, channels_last=False)
    amp_dtype = low_precision_dtype(device) if speed.low_precision else None
    if speed.low_precision and amp_dtype is None:
        warnings.warn(f"no fast reduced precision on this {device.type} device (bf16 needs AMX/AVX-512 BF16 on a "
                      "CPU): running the fast path in fp32", stacklevel=2)
    for p in network.parameters():
        p.requires_grad_(False)
    return InferenceModel(network, speed, amp_dtype)
