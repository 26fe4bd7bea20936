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
CHUNK_FLOATS = 8 * 8 * 80 * 80  # activations per batched product, (chunk, 8, h*w): 1.6 MB, a CPU's L2 cache
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

    A 1x1 conv is a matrix product over channels. Layer 0 needs no (K, 10, h, w) input: its coordinate part is
    affine in the grid point, ``W_xy @ (p - g) / (8 s) = W_xy @ p / (8 s) - W_xy @ g / (8 s)``, so each image's
    8 prototypes, the grid x, the grid y and a row of ones make one (11, h*w) input shared by all its instances,
    and layer 0 is a plain matrix product with it. Layers 1 and 2 run as batched products over chunks of instances
    whose (chunk, 8, h*w) activations fit in ``CHUNK_FLOATS`` (8 instances at 640, 32 at 320), so they stay in
    the CPU cache without paying per-chunk overhead more often than needed. Chapter 09 times it;
    ``tests/test_dynamic_mask.py`` checks it against a per-instance ``F.conv2d`` on the concatenated input.
    """
    b, c, h, w = mask_feats.shape
    if c != NUM_PROTOTYPES:
        raise ValueError(f"mask_feats must have {NUM_PROTOTYPES} prototype channels, got {c}")
    k = kernels.shape[0]
    if priors.shape != (k, 4) or image_index.shape != (k,):
        raise ValueError(
            f"kernels {tuple(kernels.shape)}, priors {tuple(priors.shape)} and image_index "
            f"{tuple(image_index.shape)} must describe the same K instances: (K, 169), (K, 4), (K,)"
        )
    if k == 0:
        return mask_feats.new_zeros(0, h, w)
    dtype = mask_feats.dtype
    weights, biases = split_dynamic_params(kernels.to(dtype))
    w0 = weights[0]  # (K, 8, 10): columns rel_x, rel_y, then the prototypes
    scale = (priors[:, 2].to(dtype) * 8)[:, None]  # (K, 1): the coordinate normaliser 8 * stride
    offset = (w0[:, :, 0] * priors[:, None, 0] + w0[:, :, 1] * priors[:, None, 1]) / scale  # (K, 8)
    w0_ext = torch.cat([w0[:, :, 2:], -w0[:, :, :2] / scale[:, :, None], (biases[0] + offset)[:, :, None]], dim=2)
    grid = grid_priors([(h, w)], [MASK_STRIDE], device=mask_feats.device, dtype=dtype)[:, :2]  # (h*w, 2) x, y
    ones = grid.new_ones(h * w, 1)
    # Instances sorted by image (the criterion's already are), so each image's chunks are consecutive rows and
    # every parameter tensor is cut with one split, whose backward is one concatenation.
    in_order = bool((image_index[1:] >= image_index[:-1]).all())
    params = [w0_ext, weights[1], biases[1], weights[2], biases[2]]
    if not in_order:
        order = torch.argsort(image_index, stable=True)
        params = [p[order] for p in params]
    # CPU: chunks that fit its cache; a GPU gains nothing from them and pays a kernel launch per chunk
    chunk_size = max(1, CHUNK_FLOATS // (DYCONV_CHANNELS * h * w)) if mask_feats.device.type == "cpu" else max(k, 1)
    sizes, owners = [], []  # rows per chunk, and the image each chunk belongs to
    for image, count in enumerate(torch.bincount(image_index, minlength=b).tolist()):
        for start in range(0, count, chunk_size):
            sizes.append(min(chunk_size, count - start))
            owners.append(image)
    inputs = {}  # image -> (c + 3, h*w): its prototypes, the grid x, the grid y, ones
    chunks = []
    for image, w0, w1, b1, w2, b2 in zip(owners, *[p.split(sizes) for p in params], strict=True):
        if image not in inputs:
            inputs[image] = torch.cat([mask_feats[image].reshape(c, h * w), grid.T, ones.T])
        n = len(w0)
        # ReLU before the reshape: in place on a view (the reshaped product), autograd would rebase the view's
        # history and copy the activations in the backward, a quarter of this function's training time (chapter 09,
        # section 8, the fifth trap)
        x = (w0.reshape(-1, c + 3) @ inputs[image]).relu_().reshape(n, DYCONV_CHANNELS, h * w)  # (n, 8, h*w)
        x = torch.baddbmm(b1[:, :, None], w1, x)  # (n, 8, h*w)
        x = torch.baddbmm(b2[:, :, None], w2, x.relu_())  # (n, 1, h*w)
        chunks.append(x[:, 0])
    logits = torch.cat(chunks).to(dtype)  # (K, h*w); under autocast the products ran in bf16
    if not in_order:
        logits = logits[torch.argsort(order)]  # back to the callers' order
    return logits.reshape(k, h, w)  # (K, h, w)
