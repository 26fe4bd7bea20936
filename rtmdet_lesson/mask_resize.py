"""Mask logits at stride 8 -> boolean masks on the original image, computing only where a mask can be on (chapter 09).

Chapter 08 resizes every instance's logits over the whole canvas (``postprocess.mask_logits_to_original``):
bilinear x8, crop the letterbox's content, bilinear to ``(H0, W0)``, threshold. For 100 instances at 640 that
is 100 x 640 x 640 interpolated values, more time than the network's fast forward.

Two facts make it cheap without changing the answer:

1. Each of the three steps is linear and acts on rows and columns separately, so the whole chain is
   ``A_y @ L @ A_x.T`` with two small matrices, ``A_y (H0, h)`` and ``A_x (W0, w)``, built here from
   ``F.interpolate`` itself (interpolating an identity matrix gives the interpolation weights).
2. Bilinear weights are non-negative and sum to 1, so an output pixel is a weighted mean of the stride-8
   logits it reads. It can exceed the threshold only if one of those logits does. An instance whose stride-8
   logits pass the threshold only in rows ``r0..r1`` and columns ``c0..c1`` can only be on in the output rows
   and columns that read them: a window about the size of the object, found from the matrices' non-zeros.

So each instance costs two matrix products over its window instead of a full-canvas resize. The values
inside the window equal the full computation up to float rounding (summation order); outside it they are
provably below the threshold. ``tests/test_mask_resize.py`` checks both against the chapter 08 path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rtmdet_lesson.preprocess import Letterbox


def interpolation_matrix(in_size: int, out_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(out_size, in_size)`` weights of 1-D bilinear resizing (align_corners False), as ``F.interpolate`` uses.

    Resizing a signal ``v (in_size,)`` gives ``matrix @ v``. Built by resizing an identity matrix along one axis.
    Chapter 09 builds it.
    """
    eye = torch.eye(in_size, dtype=dtype, device=device)[None, None]  # (1, 1, in, in)
    return F.interpolate(eye, size=(out_size, in_size), mode="bilinear", align_corners=False)[0, 0]  # (out, in)


def axis_matrix(low: int, stride: int, start: int, length: int, original: int, dtype=torch.float32,
                device=None) -> torch.Tensor:
    """One axis of chapter 08's chain: x ``stride`` to the canvas, keep ``[start, start + length)``, resize to
    ``original``. ``(original, low)``. Chapter 09."""
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
    only in each instance's window (module doc). Chapter 09.
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
    above = logits > logit_thr  # (K, h, w)
    r0, r1 = _first_last(above.any(dim=2))  # (K,) each: the rows with a logit over the threshold
    c0, c1 = _first_last(above.any(dim=1))  # (K,) each: the columns
    # output rows/columns that read an "on" row/column: their last input >= r0 and their first input <= r1
    y0, y1 = torch.searchsorted(y_last, r0), torch.searchsorted(y_first, r1, right=True)  # (K,) each
    x0, x1 = torch.searchsorted(x_last, c0), torch.searchsorted(x_first, c1, right=True)  # (K,) each
    masks = torch.zeros(k, h0, w0, dtype=torch.bool, device=logits.device)
    windows = torch.stack([y0, y1, x0, x1], dim=1).tolist()  # (K, 4); empty where nothing is over the threshold
    x_first, x_last = x_first.tolist(), x_last.tolist()  # plain ints: the loop below is per instance
    for i, (y0, y1, x0, x1) in enumerate(windows):
        if y0 >= y1 or x0 >= x1:
            continue  # nothing over the threshold, or only in the letterbox padding
        c0, c1 = x_first[x0], x_last[x1 - 1] + 1  # the inputs the window's columns read
        window = torch.mm(torch.mm(a_y[y0:y1], logits[i, :, c0:c1]), a_x[x0:x1, c0:c1].T)  # (y1 - y0, x1 - x0)
        torch.gt(window, logit_thr, out=masks[i, y0:y1, x0:x1])
    return masks


def _first_last(on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last True index of each row of ``on (K, n)``; ``(n, -1)`` for a row with none."""
    index = torch.arange(on.shape[1], device=on.device)
    return torch.where(on, index, on.shape[1]).amin(dim=1), torch.where(on, index, -1).amax(dim=1)
