"""Mask logits at stride 8 -> boolean masks on the original image, computing only where a mask can be on (chapter 09).

Chapter 08 resizes every instance's logits over the whole canvas (``postprocess.mask_logits_to_original``):
bilinear x8, crop the letterbox's content, bilinear to ``(H0, W0)``, threshold. For 100 instances at 640 that
is 100 x 640 x 640 interpolated values, on a CPU often more time than the network's forward.

Two facts make it cheap without changing the answer:

1. Each of the three steps is linear and acts on rows and columns separately, so the whole chain is
   ``A_y @ L @ A_x.T`` with two small matrices, ``A_y (H0, h)`` and ``A_x (W0, w)``, built here from
   ``F.interpolate`` itself (interpolating an identity matrix gives the interpolation weights).
2. Bilinear weights are non-negative and sum to 1, so an output pixel is a weighted mean of the stride-8
   logits it reads. It can exceed the threshold only if one of those logits does. An instance whose stride-8
   logits pass the threshold only in rows ``r0..r1`` and columns ``c0..c1`` can only be on in the output rows
   and columns that read them: a window about the size of the object, found from the matrices' non-zeros.

So each instance costs two matrix products over its window instead of a full-canvas resize. Instances whose
windows round up to the same power-of-two size share those products as two batched ones over windows of that
size (a window may grow past its instance's, where the values are exact too), so 100 instances cost a few
batched calls, not 200 small ones. The values inside a window equal the full computation up to float rounding
(summation order); outside it they are provably below the threshold. ``tests/test_mask_resize.py`` checks both
against the chapter 08 path. On a GPU the whole-canvas resize is one big call and the windows' many small calls
cost more, so ``decode_masks`` uses the windows on a CPU only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rtmdet_lesson.fast.dynamic_mask import dynamic_mask_logits
from rtmdet_lesson.postprocess import mask_logits_to_original
from rtmdet_lesson.preprocess import Letterbox

WINDOW_FLOATS = 2**18  # window values computed per batched product (1 MiB of fp32): a few big windows or many small


def interpolation_matrix(in_size: int, out_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(out_size, in_size)`` weights of 1-D bilinear resizing (align_corners False), as ``F.interpolate`` uses.

    Resizing a signal ``v (in_size,)`` gives ``matrix @ v``. Built by resizing an identity matrix along one axis.
    """
    eye = torch.eye(in_size, dtype=dtype, device=device)[None, None]  # (1, 1, in, in)
    return F.interpolate(eye, size=(out_size, in_size), mode="bilinear", align_corners=False)[0, 0]  # (out, in)


def axis_matrix(low: int, stride: int, start: int, length: int, original: int, dtype=torch.float32,
                device=None) -> torch.Tensor:
    """One axis of chapter 08's chain: x ``stride`` to the canvas, keep ``[start, start + length)``, resize to
    ``original``. ``(original, low)``."""
    matrix = interpolation_matrix(low, low * stride, dtype, device)[start : start + length]  # (length, low)
    if length != original:
        matrix = F.interpolate(matrix[None, None], size=(original, low), mode="bilinear", align_corners=False)[0, 0]
    return matrix  # (original, low)


def _support(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output row of a resize matrix ``(out, in)``: the first and the last input it reads (non-decreasing)."""
    return _first_last(matrix > 0)  # (out,) each


def masks_to_original(logits: torch.Tensor, letterbox: Letterbox, mask_thr: float = 0.5,
                      mask_stride: int = 8) -> torch.Tensor:
    """Stride-8 mask logits ``(K, h, w)`` on the canvas -> bool masks ``(K, H0, W0)`` on the original image.

    The same masks as ``postprocess.mask_logits_to_original(logits, letterbox) > logit(mask_thr)``, computed
    only in each instance's window (module doc).
    """
    k, h, w = logits.shape
    h0, w0 = letterbox.original_size
    new_h, new_w = letterbox.resized_size
    logits = logits.float()
    a_y = axis_matrix(h, mask_stride, letterbox.pad_top, new_h, h0, device=logits.device)  # (H0, h)
    a_x = axis_matrix(w, mask_stride, letterbox.pad_left, new_w, w0, device=logits.device)  # (W0, w)
    y_first, y_last = _support(a_y)  # (H0,) each
    x_first, x_last = _support(a_x)  # (W0,) each
    logit_thr = math.log(mask_thr / (1 - mask_thr))  # sigmoid(x) > t  <=>  x > logit(t)
    r0, r1 = _first_last(logits.amax(dim=2) > logit_thr)  # (K,) each: the rows with a logit over the threshold
    c0, c1 = _first_last(logits.amax(dim=1) > logit_thr)  # (K,) each: the columns
    # output rows/columns that read an "on" row/column: their last input >= r0 and their first input <= r1
    y0, y1 = torch.searchsorted(y_last, r0), torch.searchsorted(y_first, r1, right=True)  # (K,) each
    x0, x1 = torch.searchsorted(x_last, c0), torch.searchsorted(x_first, c1, right=True)  # (K,) each
    masks = torch.zeros(k, h0, w0, dtype=torch.bool, device=logits.device)
    on = (y1 > y0) & (x1 > x0)  # (K,) False: nothing over the threshold, or only in the letterbox padding
    # one group per window size rounded up to a power of two (capped at the image): (K,) height * (W0 + 1) + width
    size_y, size_x = _next_power_of_two(y1 - y0).clamp(max=h0), _next_power_of_two(x1 - x0).clamp(max=w0)
    group = torch.where(on, size_y * (w0 + 1) + size_x, -1)
    for key in group[on].unique().tolist():
        wh, ww = divmod(key, w0 + 1)  # the group's window (wh, ww)
        members = torch.nonzero(group == key).flatten()  # (n,)
        top = y0[members].clamp(max=h0 - wh)  # (n,) moved up/left where the window would leave the image
        left = x0[members].clamp(max=w0 - ww)  # (n,)
        per_product = WINDOW_FLOATS // (wh * ww)  # instances per batched product: their values stay in the cache
        if per_product <= 1:  # windows too big to share a product: one at a time, on slices of the matrices
            # (n, 4): the input rows [r0, r1) and columns [c0, c1) each window reads
            spans = torch.stack([y_first[top], y_last[top + wh - 1] + 1, x_first[left], x_last[left + ww - 1] + 1], 1)
            windows = zip(members.tolist(), top.tolist(), left.tolist(), spans.tolist(), strict=True)
            for i, y, x, (r0, r1, c0, c1) in windows:
                window = torch.mm(torch.mm(a_y[y : y + wh, r0:r1], logits[i, r0:r1, c0:c1]), a_x[x : x + ww, c0:c1].T)
                torch.gt(window, logit_thr, out=masks[i, y : y + wh, x : x + ww])
            continue
        for part in torch.arange(len(members), device=members.device).split(per_product):
            rows, a_rows = _window(a_y, y_first, y_last, top[part], wh)  # (n, rh) input rows, (n, wh, rh) weights
            cols, a_cols = _window(a_x, x_first, x_last, left[part], ww)  # (n, rw), (n, ww, rw)
            inputs = logits[members[part, None, None], rows[:, :, None], cols[:, None, :]]  # (n, rh, rw) they read
            window = torch.bmm(torch.bmm(a_rows, inputs), a_cols.transpose(1, 2)) > logit_thr  # (n, wh, ww)
            windows = zip(members[part].tolist(), top[part].tolist(), left[part].tolist(), window, strict=True)
            for i, y, x, on_pixels in windows:
                masks[i, y : y + wh, x : x + ww] = on_pixels
    return masks


def decode_masks(mask_feats: torch.Tensor, kernels: torch.Tensor, priors: torch.Tensor, letterbox: Letterbox,
                 mask_thr: float, mask_stride: int = 8) -> torch.Tensor:
    """``postprocess.decode_masks`` with the chunked dynamic head and, on a CPU, the windowed resize: ``(K, H0, W0)``
    bool masks of one image's K instances."""
    image_index = torch.zeros(len(kernels), dtype=torch.int64, device=kernels.device)  # all from this image
    logits = dynamic_mask_logits(mask_feats, kernels, priors, image_index)  # (K, h, w) stride 8
    if logits.device.type == "cpu":
        return masks_to_original(logits, letterbox, mask_thr, mask_stride)
    logit_thr = math.log(mask_thr / (1 - mask_thr))
    return mask_logits_to_original(logits, letterbox, mask_stride) > logit_thr


def _next_power_of_two(n: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= n, element-wise, for n >= 1 (0 stays 1)."""
    return torch.where(n > 1, 2 ** torch.ceil(torch.log2(n.clamp(min=1).double())).long(), 1)


def _window(matrix: torch.Tensor, first: torch.Tensor, last: torch.Tensor, start: torch.Tensor,
            size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of ``size`` output rows of a resize ``matrix (out, in)`` starting at ``start (n,)``: the input
    positions they read, as one span as long as the longest one ``(n, r)`` (shifted to stay inside the input),
    and the matrix's entries for them ``(n, size, r)``."""
    lo, hi = first[start], last[start + size - 1] + 1  # (n,) each: the inputs the window reads
    span = int((hi - lo).max())
    lo = lo.clamp(max=matrix.shape[1] - span)
    inputs = lo[:, None] + torch.arange(span, device=matrix.device)  # (n, r)
    outputs = start[:, None] + torch.arange(size, device=matrix.device)  # (n, size)
    return inputs, matrix[outputs[:, :, None], inputs[:, None, :]]


def _first_last(on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last True index of each row of ``on (K, n)``; ``(n, -1)`` for a row with none."""
    index = torch.arange(on.shape[1], device=on.device)
    return torch.where(on, index, on.shape[1]).amin(dim=1), torch.where(on, index, -1).amax(dim=1)
