"""Priors and relative coordinates (chapter 04), checked by hand on tiny grids."""

import pytest
import torch

from rtmdet_lesson.priors import grid_priors, relative_coordinates


def test_grid_priors_hand_checked():
    priors = grid_priors([(2, 3), (1, 2)], strides=(8, 16))
    expected = torch.tensor(
        [
            [0, 0, 8, 8],
            [8, 0, 8, 8],
            [16, 0, 8, 8],  # level 0, row 0 (x inner)
            [0, 8, 8, 8],
            [8, 8, 8, 8],
            [16, 8, 8, 8],  # level 0, row 1
            [0, 0, 16, 16],
            [16, 0, 16, 16],  # level 1
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(priors, expected)


def test_grid_priors_640_has_8400_points_and_offset_zero():
    priors = grid_priors([(80, 80), (40, 40), (20, 20)])
    assert priors.shape == (8400, 4)
    assert priors[:, :2].min() == 0  # offset 0: the first point is the image corner
    assert priors[6399].tolist() == [632, 632, 8, 8]  # last stride-8 point
    assert priors[6400].tolist() == [0, 0, 16, 16]  # first stride-16 point
    assert priors[-1].tolist() == [608, 608, 32, 32]


def test_grid_priors_non_square_and_dtype():
    priors = grid_priors([(2, 4)], strides=(32,), dtype=torch.float64)
    assert priors.dtype == torch.float64
    assert priors[:, 0].tolist() == [0, 32, 64, 96, 0, 32, 64, 96]
    assert priors[:, 1].tolist() == [0, 0, 0, 0, 32, 32, 32, 32]


def test_grid_priors_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one \\(h, w\\) per stride"):
        grid_priors([(2, 2)], strides=(8, 16))


def test_relative_coordinates_hand_checked():
    prior_xy = torch.tensor([[16.0, 8.0], [0.0, 0.0]])
    prior_stride = torch.tensor([16.0, 8.0])
    rel = relative_coordinates(prior_xy, prior_stride, (2, 3))
    assert rel.shape == (2, 2, 2, 3)
    # instance 0: prior (16, 8), stride 16 -> divide by 128; grid x = 0, 8, 16 and y = 0, 8
    torch.testing.assert_close(rel[0, 0], torch.tensor([[16.0, 8, 0], [16, 8, 0]]) / 128)
    torch.testing.assert_close(rel[0, 1], torch.tensor([[8.0, 8, 8], [0, 0, 0]]) / 128)
    # instance 1: prior at the origin, stride 8 -> prior minus grid is negative, divide by 64
    torch.testing.assert_close(rel[1, 0], -torch.tensor([[0.0, 8, 16], [0, 8, 16]]) / 64)
    torch.testing.assert_close(rel[1, 1], -torch.tensor([[0.0, 0, 0], [8, 8, 8]]) / 64)


def test_relative_coordinates_follow_dtype_and_empty():
    rel = relative_coordinates(torch.zeros(3, 2, dtype=torch.float64), torch.full((3,), 32.0), (4, 5))
    assert rel.dtype == torch.float64 and rel.shape == (3, 2, 4, 5)
    empty = relative_coordinates(torch.zeros(0, 2), torch.zeros(0), (4, 5))
    assert empty.shape == (0, 2, 4, 5)


def test_relative_coordinates_rejects_bad_shape():
    with pytest.raises(ValueError, match="\\(K, 2\\)"):
        relative_coordinates(torch.zeros(3, 4), torch.ones(3), (2, 2))
