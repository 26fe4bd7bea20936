"""Parameters and multiply-accumulates per module of a preset (chapter 03).

``python -m rtmdet_lesson summary PRESET`` prints the table. FLOPs follow the convention of the published
Ins numbers (fvcore / mmengine style): **one multiply-accumulate of a convolution = 1 FLOP**; BN,
activations, pooling, upsampling, bias adds and the dynamic mask convs are not counted. The count comes from
forward hooks on every ``nn.Conv2d`` during one forward pass on PyTorch's ``meta`` device (shapes only, no
arithmetic, so even the x models take a fraction of a second). A conv run twice counts twice, so the
default Ins head pays for its second pass of the cls tower, as the published numbers do.
"""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Unique trainable parameters (a shared conv counts once, BN running stats not at all)."""
    return sum(p.numel() for p in module.parameters())


def model_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The model split the way chapter 03 counts it: backbone, neck, and the head's parts."""
    head = model.head
    parts = {"backbone": model.backbone, "neck": model.neck, "head: cls tower": head.cls_tower}
    if head.reg_tower is not None:
        parts["head: reg tower"] = head.reg_tower
    if model.with_mask:
        parts["head: kernel towers"] = head.kernel_convs
    predictors = [head.rtm_cls, head.rtm_reg] + ([head.rtm_kernel] if model.with_mask else [])
    parts["head: predictors"] = nn.ModuleList(predictors)
    if model.with_mask:
        parts["head: mask features"] = head.mask_head
    return parts


def conv_macs(model: nn.Module, image_size: tuple[int, int] = (640, 640)) -> dict[nn.Module, int]:
    """Multiply-accumulates of every ``nn.Conv2d`` for one image, measured with forward hooks on ``meta``."""
    macs: dict[nn.Module, int] = {}

    def hook(conv: nn.Conv2d, inputs, output: torch.Tensor) -> None:
        per_output = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        macs[conv] = macs.get(conv, 0) + output[0].numel() * per_output  # one image: output[0] is (C, H, W)

    with torch.device("meta"):  # the same architecture, without memory or arithmetic
        meta = type(model)(**model.settings)
    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        meta.eval()(torch.zeros(1, 3, *image_size, device="meta"))
    for handle in handles:
        handle.remove()
    by_name = {name: macs.get(module, 0) for name, module in meta.named_modules() if isinstance(module, nn.Conv2d)}
    return {module: by_name[name] for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


def summarize(model: nn.Module, image_size: tuple[int, int] = (640, 640)) -> list[tuple[str, int, int]]:
    """Rows ``(part, parameters, conv MACs at image_size)`` per part, then a ``total`` row."""
    macs = conv_macs(model, image_size)
    rows = []
    for name, part in model_parts(model).items():
        part_macs = sum(macs[m] for m in set(part.modules()) if isinstance(m, nn.Conv2d))
        rows.append((name, count_parameters(part), part_macs))
    rows.append(("total", count_parameters(model), sum(macs.values())))
    return rows


def format_table(rows: list[tuple[str, int, int]], image_size: tuple[int, int] = (640, 640)) -> str:
    """The rows of ``summarize`` as a text table (parameters exact, GFLOPs to two decimals)."""
    h, w = image_size
    lines = [f"{'part':<22}{'parameters':>14}{f'GFLOPs@{h}x{w}':>16}"]
    lines += [f"{name:<22}{params:>14,}{flops / 1e9:>16.2f}" for name, params, flops in rows]
    return "\n".join(lines)

