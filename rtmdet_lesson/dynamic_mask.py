"""The dynamic mask head: three tiny per-instance 1x1 convs (chapter 08).

Every kept instance carries 169 numbers predicted by ``rtm_kernel``. They are the weights and biases of
three **1x1** convolutions that turn 10 input channels (relative x, relative y, 8 prototypes) into one mask
logit per stride-8 pixel:

    layer 0: 10 -> 8, ReLU    80 weights + 8 biases = 88
    layer 1:  8 -> 8, ReLU    64 weights + 8 biases = 72
    layer 2:  8 -> 1          8 weights + 1 bias    =  9
                                                     169

Common mistake: "72" is the 8x8 weights plus 8 biases of the middle 1x1 conv, **not** an 8-channel 3x3
kernel. The vector stores all weights first (80, 64, 8), then all biases (8, 8, 1), as the reference does.
"""

from __future__ import annotations

import torch

from rtmdet_lesson.priors import grid_priors

NUM_PROTOTYPES = 8
MASK_STRIDE = 8  # the prototypes' stride: their grid points are (j * 8, i * 8)
DYCONV_CHANNELS = 8
# (out, in) of the three dynamic 1x1 convs; in of layer 0 = 2 coordinate maps + the prototypes.
LAYER_SHAPES = ((DYCONV_CHANNELS, NUM_PROTOTYPES + 2), (DYCONV_CHANNELS, DYCONV_CHANNELS), (1, DYCONV_CHANNELS))
NUM_DYNAMIC_PARAMS = sum(o * i for o, i in LAYER_SHAPES) + sum(o for o, _ in LAYER_SHAPES)  # 169


def split_dynamic_params(kernels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Cut each instance's 169 numbers into three weight matrices and three bias vectors. Chapter 08.

    Args:
        kernels: ``(K, 169)``.

    Returns:
        ``(weights, biases)``: weights of shapes ``(K, 8, 10), (K, 8, 8), (K, 1, 8)`` (out, in of each 1x1
        conv) and biases of shapes ``(K, 8), (K, 8), (K, 1)``.
    """
    if kernels.ndim != 2 or kernels.shape[1] != NUM_DYNAMIC_PARAMS:
        raise ValueError(
            f"kernels must be (K, {NUM_DYNAMIC_PARAMS}) per-instance dynamic parameters, got shape "
            f"{tuple(kernels.shape)}; take them from rtm_kernel's output at the kept priors"
        )
    k = kernels.shape[0]
    sizes = [o * i for o, i in LAYER_SHAPES] + [o for o, _ in LAYER_SHAPES]  # [80, 64, 8, 8, 8, 1]
    chunks = torch.split(kernels, sizes, dim=1)
    weights = [w.reshape(k, o, i) for w, (o, i) in zip(chunks[:3], LAYER_SHAPES, strict=True)]  # (K, out, in)
    biases = list(chunks[3:])  # (K, out)
    return weights, biases


def check_instances(mask_feats: torch.Tensor, kernels: torch.Tensor, priors: torch.Tensor,
                    image_index: torch.Tensor) -> None:
    """Raise a ValueError naming the problem unless the arguments describe the same K instances."""
    c = mask_feats.shape[1]
    if c != NUM_PROTOTYPES:
        raise ValueError(f"mask_feats must have {NUM_PROTOTYPES} prototype channels, got {c}")
    k = kernels.shape[0]
    if priors.shape != (k, 4) or image_index.shape != (k,):
        raise ValueError(
            f"kernels {tuple(kernels.shape)}, priors {tuple(priors.shape)} and image_index "
            f"{tuple(image_index.shape)} must describe the same K instances: (K, 169), (K, 4), (K,)"
        )


def dynamic_mask_logits(
    mask_feats: torch.Tensor,
    kernels: torch.Tensor,
    priors: torch.Tensor,
    image_index: torch.Tensor,
) -> torch.Tensor:
    """Stride-8 mask logits of K instances at once. Chapter 08 builds this.

    Args:
        mask_feats: ``(B, 8, h, w)`` prototypes from the mask-feature module (stride 8).
        kernels: ``(K, 169)`` dynamic parameters of the instances.
        priors: ``(K, 4)`` their priors ``(x, y, stride_w, stride_h)``.
        image_index: ``(K,)`` int64, which image of the batch each instance belongs to.

    Returns:
        ``(K, h, w)`` mask logits at stride 8 (apply sigmoid after upsampling, never before).

    Each instance's input is 10 maps: its relative coordinates ``(prior - grid point) / (8 * stride)`` and its
    image's 8 prototypes (mmdetection's ``RTMDetInsHead._mask_predict_by_feat_single``). A 1x1 conv is a matrix
    product over channels, so the three layers run for all K instances as three batched products (einsums).
    """
    check_instances(mask_feats, kernels, priors, image_index)
    b, c, h, w = mask_feats.shape
    k = kernels.shape[0]
    if k == 0:
        return mask_feats.new_zeros(0, h, w)
    dtype = mask_feats.dtype
    weights, biases = split_dynamic_params(kernels.to(dtype))
    grid = grid_priors([(h, w)], [MASK_STRIDE], device=mask_feats.device, dtype=dtype)[:, :2]  # (h*w, 2) x, y
    priors = priors.to(dtype)
    relative = (priors[:, None, :2] - grid[None]) / (priors[:, None, 2:3] * 8)  # (K, h*w, 2)
    x = torch.cat([relative.transpose(1, 2), mask_feats[image_index].reshape(k, c, h * w)], dim=1)  # (K, 10, h*w)
    for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        x = torch.einsum("koi,kip->kop", weight, x) + bias[:, :, None]  # (K, out, h*w)
        if layer < len(weights) - 1:
            x = x.relu()
    return x.reshape(k, h, w)  # (K, h, w)
