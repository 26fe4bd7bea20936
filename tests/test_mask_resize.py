"""Windowed mask resizing gives chapter 08's full-canvas masks (chapter 09).

The slow oracle is ``postprocess.mask_logits_to_original``: bilinear x8 over the whole canvas, crop, resize,
threshold. The two may differ only on pixels whose logit lies within float rounding of the threshold.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from rtmdet_lesson.fast.mask_resize import axis_matrix, interpolation_matrix, masks_to_original
from rtmdet_lesson.postprocess import mask_logits_to_original
from rtmdet_lesson.preprocess import letterbox_geometry

LETTERBOXES = [((480, 640), (640, 640)), ((333, 517), (640, 640)), ((700, 300), (320, 320)),
               ((100, 1000), (320, 320)), ((320, 320), (320, 320)), ((5, 7), (64, 96))]


def blob_logits(k: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Object-like logits: positive in a disc of random centre and radius, plus noise. ``(K, h, w)``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cy, cx, r = torch.rand(k, generator=g) * h, torch.rand(k, generator=g) * w, 0.5 + torch.rand(k, generator=g) * 6
    dist = ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2).sqrt()
    return 2 - dist / r[:, None, None] + 0.3 * torch.randn(k, h, w, generator=g)


def assert_same_masks(logits, letterbox, mask_thr):
    full = mask_logits_to_original(logits, letterbox)  # (K, H0, W0) logits: the oracle
    threshold = math.log(mask_thr / (1 - mask_thr))
    fast = masks_to_original(logits, letterbox, mask_thr)
    assert fast.shape == full.shape and fast.dtype == torch.bool
    differ = fast != (full > threshold)
    assert not (differ & ((full - threshold).abs() > 1e-4)).any()
    return fast


@pytest.mark.parametrize("in_size, out_size", [(5, 40), (40, 5), (7, 7), (80, 640), (13, 17)])
def test_interpolation_matrix_is_f_interpolate(in_size, out_size):
    v = torch.randn(3, in_size)
    expected = F.interpolate(v[None], size=out_size, mode="linear", align_corners=False)[0]  # (3, out)
    torch.testing.assert_close(v @ interpolation_matrix(in_size, out_size).T, expected)
    matrix = interpolation_matrix(in_size, out_size)
    assert (matrix >= 0).all()
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(out_size))  # a weighted mean: the window argument


@pytest.mark.parametrize("original, canvas", LETTERBOXES)
def test_axis_matrices_reproduce_the_full_chain(original, canvas):
    box = letterbox_geometry(original, canvas)
    logits = torch.randn(2, canvas[0] // 8, canvas[1] // 8)
    a_y = axis_matrix(canvas[0] // 8, 8, box.pad_top, box.resized_size[0], original[0])
    a_x = axis_matrix(canvas[1] // 8, 8, box.pad_left, box.resized_size[1], original[1])
    torch.testing.assert_close(a_y @ logits @ a_x.T, mask_logits_to_original(logits, box), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("original, canvas", LETTERBOXES)
@pytest.mark.parametrize("mask_thr", [0.5, 0.3])
def test_windowed_masks_equal_full_canvas_masks(original, canvas, mask_thr):
    box = letterbox_geometry(original, canvas)
    masks = assert_same_masks(blob_logits(40, canvas[0] // 8, canvas[1] // 8), box, mask_thr)
    assert masks.any(dim=(1, 2)).sum() > 5  # the test has masks to get wrong


def test_masks_everywhere_still_match():
    box = letterbox_geometry((480, 640), (640, 640))
    masks = assert_same_masks(torch.randn(10, 80, 80) + 1, box, 0.5)  # positive almost everywhere: full windows
    assert masks.float().mean() > 0.5


def test_many_windows_of_one_size_split_into_several_batched_products():
    """300 objects of one size share a window size; WINDOW_FLOATS caps how many go into one product."""
    box = letterbox_geometry((333, 517), (640, 640))
    logits = torch.full((300, 80, 80), -5.0)
    g = torch.Generator().manual_seed(3)
    for i, (y, x) in enumerate(zip(torch.randint(0, 41, (300,), generator=g).tolist(),  # content rows 0..41
                                   torch.randint(0, 80, (300,), generator=g).tolist(), strict=True)):
        logits[i, y : y + 2, x : x + 2] = 3.0  # 2x2 stride-8 cells, cut by the right and bottom edges at times
    masks = assert_same_masks(logits, box, 0.5)
    assert masks.any(dim=(1, 2)).all()


def test_tiny_objects_of_one_stride8_pixel():
    box = letterbox_geometry((240, 320), (320, 320))
    logits = torch.full((3, 40, 40), -5.0)
    logits[0, 10, 10] = 5.0
    logits[1, 0, 0] = 5.0  # corner
    logits[2, 29, 39] = 5.0  # last content row (240 / 8 = 30 rows) and column
    masks = assert_same_masks(logits, box, 0.5)
    assert masks.any(dim=(1, 2)).all()


def test_no_instances_and_nothing_over_the_threshold():
    box = letterbox_geometry((100, 150), (160, 160))
    assert masks_to_original(torch.zeros(0, 20, 20), box).shape == (0, 100, 150)
    assert not masks_to_original(torch.full((4, 20, 20), -1.0), box).any()


def test_logits_only_in_the_padding_give_empty_masks():
    box = letterbox_geometry((80, 320), (320, 320))  # content rows 0..79 of 320: rows 10..39 at stride 8 are padding
    logits = torch.full((1, 40, 40), -5.0)
    logits[0, 30:, :] = 5.0
    assert not assert_same_masks(logits, box, 0.5).any()
