"""The dynamic mask head of chapter 08, rewritten to stay in a CPU's cache (chapter 09).

``dynamic_mask_logits`` here returns chapter 08's logits (``rtmdet_lesson.dynamic_mask``) with two changes of
computation, not of values:

- Layer 0 needs no (K, 10, h, w) input. Its coordinate part is affine in the grid point,
  ``W_xy @ (p - g) / (8 s) = W_xy @ p / (8 s) - W_xy @ g / (8 s)``, so each image's 8 prototypes, the grid x,
  the grid y and a row of ones make one (11, h*w) input shared by all its instances, and layer 0 is one plain
  matrix product with it.
- Layers 1 and 2 run as batched products over chunks of instances whose (chunk, 8, h*w) activations fit in
  ``CHUNK_FLOATS`` (8 instances at 640, 32 at 320), so they stay in the CPU's cache. A GPU gains nothing from
  chunks and pays a kernel launch for each, so there it runs all instances as one chunk.

``tests/test_dynamic_mask.py`` checks it against the plain version and a per-instance ``F.conv2d`` loop.
"""

from __future__ import annotations

import torch

from rtmdet_lesson.dynamic_mask import DYCONV_CHANNELS, MASK_STRIDE, check_instances, split_dynamic_params
from rtmdet_lesson.priors import grid_priors

CHUNK_FLOATS = 8 * 8 * 80 * 80  # activations per batched product, (chunk, 8, h*w): 1.6 MB, a CPU's L2 cache


def dynamic_mask_logits(
    mask_feats: torch.Tensor,
    kernels: torch.Tensor,
    priors: torch.Tensor,
    image_index: torch.Tensor,
) -> torch.Tensor:
    """Stride-8 mask logits of K instances in chunks (chapter 09): the same arguments, shapes and outputs as
    ``rtmdet_lesson.dynamic_mask.dynamic_mask_logits`` (chapter 08); the module doc says how it differs."""
    check_instances(mask_feats, kernels, priors, image_index)
    b, c, h, w = mask_feats.shape
    k = kernels.shape[0]
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
        # history and copy the activations in the backward
        x = (w0.reshape(-1, c + 3) @ inputs[image]).relu_().reshape(n, DYCONV_CHANNELS, h * w)  # (n, 8, h*w)
        x = torch.baddbmm(b1[:, :, None], w1, x)  # (n, 8, h*w)
        x = torch.baddbmm(b2[:, :, None], w2, x.relu_())  # (n, 1, h*w)
        chunks.append(x[:, 0])
    logits = torch.cat(chunks).to(dtype)  # (K, h*w); under autocast the products ran in bf16
    if not in_order:
        logits = logits[torch.argsort(order)]  # back to the callers' order
    return logits.reshape(k, h, w)  # (K, h, w)
