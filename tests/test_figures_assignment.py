"""Chapter 05's figures: what assignment_figure and positives_figure draw, on a small random image."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from rtmdet_lesson.assigner import DynamicSoftLabelAssigner, assignment_costs, pad_targets
from rtmdet_lesson.figures.assignment import (
    COST_FLOOR,
    assignment_figure,
    colour_limits,
    cost_maps,
    level_maps,
    positives_figure,
)
from rtmdet_lesson.priors import grid_priors

matplotlib.use("Agg")

SIZES = [(12, 16), (6, 8), (3, 4)]  # a 96 x 128 image at strides 8, 16, 32


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def scene():
    gen = torch.Generator().manual_seed(0)
    priors = grid_priors(SIZES)  # (N, 4)
    n = priors.shape[0]
    gt_boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0], [30.0, 60.0, 50.0, 90.0]])
    gt_labels = torch.tensor([0, 2, 1])
    dist = 4 + torch.rand(n, 4, generator=gen) * 30
    boxes = torch.cat([priors[:, :2] - dist[:, :2], priors[:, :2] + dist[:, 2:]], 1)  # (N, 4)
    logits = torch.randn(n, 3, generator=gen) - 3  # (N, C)
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8, generator=gen)
    return image, logits, boxes, priors, gt_boxes, gt_labels


def _map_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images and ax.get_xlabel().startswith("stride")]


def _colour_bars(fig: Figure) -> list:
    return [child for ax in fig.axes for child in ax.child_axes if child.get_title() == "costly"]


def test_cost_maps_hold_the_weighted_terms_on_candidates_and_nan_elsewhere(scene):
    image, logits, boxes, priors, gt_boxes, gt_labels = scene
    maps = cost_maps(logits, boxes, priors, gt_boxes, gt_labels, None, object_index=1, weights=(2.0, 3.0, 0.5))
    terms = assignment_costs(logits, boxes, priors, gt_boxes, gt_labels)
    torch.testing.assert_close(maps["total"][terms.candidates], terms.total(2.0, 3.0, 0.5)[:, 1])
    torch.testing.assert_close(maps["center"][terms.candidates], 0.5 * terms.center[:, 1])
    assert torch.isnan(maps["total"][~terms.candidate_mask]).all()
    assert [m.shape for m in level_maps(maps["iou"], SIZES)] == SIZES


def test_assignment_figure_draws_four_terms_per_level_with_labelled_colour_bars(scene):
    image, logits, boxes, priors, gt_boxes, gt_labels = scene
    fig = assignment_figure(image, logits, boxes, priors, SIZES, gt_boxes, gt_labels, object_index=1, topk=5)
    assert isinstance(fig, Figure)
    maps = _map_axes(fig)
    assert len(maps) == 4 * 3  # cls, IoU, centre and total at each of the three levels
    assert sorted({ax.get_xlabel() for ax in maps}) == ["stride 16", "stride 32", "stride 8"]
    assert [m.get_array().shape for m in (ax.images[0] for ax in maps[:3])] == SIZES
    titles = {ax.get_title() for ax in maps} - {""}
    assert titles == {"classification cost × 1", "IoU cost × 3", "centre prior × 1", "total cost (what is ranked)"}
    bars = _colour_bars(fig)
    assert len(bars) == 4 and all(bar.get_xlabel() == "cheap" for bar in bars)  # cheap at the bottom
    for bar in bars:  # ticks in powers of ten, no offset label such as "-6" over the bar
        assert bar.yaxis.get_offset_text().get_text() == ""
        assert all(label.get_text().startswith("$10^") for label in bar.get_yticklabels())


def test_assignment_figure_fits_a_laptop_screen_with_the_sliders(scene):
    image, logits, boxes, priors, gt_boxes, gt_labels = scene
    fig = assignment_figure(image, logits, boxes, priors, SIZES, gt_boxes, gt_labels)
    width, height = fig.get_size_inches() * 100  # pixels at Jupyter's inline 100 dpi
    assert height <= 450 and width / height >= 2.5


def test_the_legend_shows_the_level_markers_themselves(scene):
    image, logits, boxes, priors, gt_boxes, gt_labels = scene
    fig = assignment_figure(image, logits, boxes, priors, SIZES, gt_boxes, gt_labels)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["stride 8", "stride 16", "stride 32"]
    assert [h.get_marker() for h in legend.legend_handles] == ["o", "s", "D"]
    assert "(o stride" not in fig.axes[0].get_title()
    fig = positives_figure(image, priors, gt_boxes, torch.full((priors.shape[0],), -1))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["stride 8", "stride 16", "stride 32"]


def test_the_title_counts_the_positives_the_assigner_gives_the_object(scene):
    image, logits, boxes, priors, gt_boxes, gt_labels = scene
    centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    g_boxes, g_labels, g_centers, valid = pad_targets([gt_boxes], [gt_labels], [centers])
    result = DynamicSoftLabelAssigner(topk=4)(logits[None], boxes[None], priors, g_boxes, g_labels, valid, g_centers)
    for j in range(len(gt_boxes)):
        fig = assignment_figure(image, logits, boxes, priors, SIZES, gt_boxes, gt_labels, object_index=j, topk=4)
        assert fig.axes[0].get_title() == f"object {j}: {int((result.gt_index[0] == j).sum())} positive(s)"
        plt.close(fig)


def test_a_weight_of_zero_gives_one_colour_and_a_zero_tick_not_tiny_decimals(scene):
    image, logits, boxes, priors, gt_boxes, gt_labels = scene
    fig = assignment_figure(image, logits, boxes, priors, SIZES, gt_boxes, gt_labels, iou_weight=0.0)
    iou_bar = _colour_bars(fig)[1]  # cls, IoU, centre, total in reading order
    assert [label.get_text() for label in iou_bar.get_yticklabels()] == ["0"]
    assert iou_bar.yaxis.get_offset_text().get_text() == ""
    low, high = colour_limits([np.zeros((2, 3)), np.full((1, 2), np.nan)])
    assert (low, high) == pytest.approx((np.log10(COST_FLOOR) - 0.5, np.log10(COST_FLOOR) + 0.5))


def test_colour_limits_span_at_most_the_given_decades():
    values = [np.array([[1e-2, 1.0], [np.nan, 10.0]]), np.array([[1e4]])]
    assert colour_limits(values, span_decades=3.0) == pytest.approx((-2.0, 1.0))
    assert colour_limits(values, span_decades=10.0) == pytest.approx((-2.0, 4.0))
    assert colour_limits([np.full((2, 2), np.nan)]) == (-1.0, 0.0)  # no candidate at all
