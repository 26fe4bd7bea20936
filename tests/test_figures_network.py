"""The network chapters' plot helpers run on tiny inputs and return figures or arrays of the right shapes."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from rtmdet_lesson.figures import network

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_effective_receptive_field_of_one_conv_is_its_kernel_footprint():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    erf = network.effective_receptive_field(conv, in_channels=2, size=9, batch=2)
    assert erf.shape == (9, 9)
    assert erf.max() == pytest.approx(1.0)
    nonzero = np.argwhere(erf > 0)
    assert nonzero.min(0).tolist() == [3, 3] and nonzero.max(0).tolist() == [5, 5]  # the centre 3x3 only
    assert network.receptive_field_radius(erf, mass=1.0) == 1


def test_stacked_convs_grow_the_receptive_field():
    one = nn.Conv2d(1, 1, 5, padding=2)
    two = nn.Sequential(nn.Conv2d(1, 1, 5, padding=2), nn.Conv2d(1, 1, 5, padding=2))
    r1 = network.receptive_field_radius(network.effective_receptive_field(one, 1, size=21), mass=1.0)
    r2 = network.receptive_field_radius(network.effective_receptive_field(two, 1, size=21), mass=1.0)
    assert (r1, r2) == (2, 4)


def test_plot_receptive_fields_returns_a_figure():
    erf = np.zeros((7, 7))
    erf[3, 3] = 1.0
    fig = network.plot_receptive_fields({"a": erf, "b": erf})
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert "non-zero r=0" in fig.axes[0].get_title()
    assert isinstance(network.plot_receptive_fields({"a": erf}, log=True), Figure)


def test_plot_lines():
    fig = network.plot_lines({"a": [1.0, 0.5], "b": np.array([1.0, 0.1])}, "depth", "cosine", title="t")
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 2


def test_plot_feature_maps_with_and_without_image():
    feats = {"P3": torch.randn(4, 8, 8), "P4": torch.randn(4, 4, 4)}
    fig = network.plot_feature_maps(feats, image=torch.zeros(3, 64, 64, dtype=torch.uint8), channels=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 3
    assert isinstance(network.plot_feature_maps(feats, channels=1), Figure)
    with pytest.raises(ValueError, match="drop B"):
        network.plot_feature_maps({"P3": torch.randn(1, 4, 8, 8)})


class _TopDownOnly(nn.Module):
    """P5 sees only C5, P4 sees C4 and C5, P3 sees all: a plain top-down pyramid in miniature."""

    def forward(self, feats):
        c3, c4, c5 = feats
        p5 = c5
        p4 = c4 + nn.functional.interpolate(p5, scale_factor=2)
        p3 = c3 + nn.functional.interpolate(p4, scale_factor=2)
        return p3, p4, p5


def test_neck_dependencies_of_a_top_down_pyramid_is_lower_triangular():
    deps = network.neck_dependencies(_TopDownOnly(), channels=(2, 2, 2), size=32)
    expected = np.array([[True, True, True], [False, True, True], [False, False, True]])
    np.testing.assert_array_equal(deps, expected)


@pytest.mark.parametrize("bottom_up", [True, False])
def test_plot_neck_diagram(bottom_up):
    assert isinstance(network.plot_neck_diagram(show_bottom_up=bottom_up), Figure)


def test_plot_distance_coding_and_score_histogram():
    fig = network.plot_distance_coding((16, 24), (1.0, 0.5, 2.0, 1.5), stride=8, canvas=(48, 48))
    assert isinstance(fig, Figure)
    assert "box = (8, 20, 32, 36)" in fig.axes[0].get_title()
    fig = network.plot_score_histogram({"level 0": torch.rand(2, 5, 4, 4)})
    assert isinstance(fig, Figure)


def test_prior_coordinate_maps_shapes_and_zero_at_the_prior():
    prior, coords = network.prior_coordinate_maps((64, 96), level=1, row=2, col=3)
    assert prior.tolist() == [48.0, 32.0, 16.0, 16.0]
    assert coords.shape == (2, 8, 12)
    assert coords[0, 4, 6] == 0 and coords[1, 4, 6] == 0  # grid point (48, 32) is the prior itself
    assert coords[0, 4, 7] == pytest.approx(-8 / 128)  # one stride-8 step right, normalised by 16 * 8
    with pytest.raises(ValueError, match="outside"):
        network.prior_coordinate_maps((64, 96), level=2, row=2, col=0)


def test_prior_coordinates_figure_accepts_tensor_and_array_images():
    img = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    fig = network.prior_coordinates_figure(img, level=0, x=20, y=9)
    assert isinstance(fig, Figure) and "prior (16, 8)" in fig.axes[0].get_title()
    fig = network.prior_coordinates_figure(img.permute(1, 2, 0).numpy(), level=2, x=500, y=500)  # clamped
    assert "prior (32, 32)" in fig.axes[0].get_title()


def test_plot_small_object_priors_counts_strictly_inside():
    fig = network.plot_small_object_priors((17.0, 17.0, 23.0, 23.0), stride=8)
    assert "strictly inside: 0" in fig.axes[0].get_title()
    fig = network.plot_small_object_priors((13.0, 13.0, 19.0, 19.0), stride=8)  # holds the point (16, 16)
    assert "strictly inside: 1" in fig.axes[0].get_title()
    fig = network.plot_small_object_priors((15.0, 15.0, 25.0, 25.0), stride=8)  # 16 and 24 on both axes
    assert "strictly inside: 4" in fig.axes[0].get_title()
    fig = network.plot_small_object_priors((16.0, 16.0, 24.0, 24.0), stride=8)  # on the points: not strictly
    assert "strictly inside: 0" in fig.axes[0].get_title()
