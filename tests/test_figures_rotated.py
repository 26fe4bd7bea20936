"""Rotated-box figures (rtmdet_lesson.figures.rotated): the widget's intersection polygon and drawings."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rtmdet_lesson.figures.rotated import draw_rotated, intersection_polygon, rotated_iou_figure  # noqa: E402
from rtmdet_lesson.rotated import rbox_area, rotated_iou  # noqa: E402


def _shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_intersection_polygon_area_gives_the_package_iou():
    rng = np.random.default_rng(1)
    for _ in range(100):
        a, b = (torch.tensor([*rng.uniform(-5, 5, 2), *rng.uniform(1, 10, 2), rng.uniform(-3, 3)]) for _ in range(2))
        inter = _shoelace(intersection_polygon(a, b)) if len(intersection_polygon(a, b)) else 0.0
        union = float(rbox_area(a) + rbox_area(b)) - inter
        expected = float(rotated_iou(a[None].double(), b[None].double(), aligned=True)[0])
        assert inter / union == pytest.approx(expected, abs=1e-9)


def test_intersection_polygon_by_hand():
    # a 4 x 2 box and the same box turned by 90 degrees: a 2 x 2 square
    square = intersection_polygon(torch.tensor([0.0, 0, 4, 2, 0]), torch.tensor([0.0, 0, 4, 2, math.pi / 2]))
    assert len(square) == 4 and _shoelace(square) == pytest.approx(4.0)
    assert len(intersection_polygon(torch.tensor([0.0, 0, 2, 2, 0]), torch.tensor([10.0, 0, 2, 2, 0]))) == 0


def test_figures():
    fig = rotated_iou_figure(0.0, 90.0, 0.0, box_a=(0, 0, 40, 20), box_b=(0, 0, 40, 20))
    assert fig.axes[0].get_title() == "IoU = 0.333 (4 corners)"
    plt.close(fig)
    image = np.zeros((40, 60, 3), np.uint8)
    fig = draw_rotated(image, torch.tensor([[20.0, 20, 16, 8, 0.5]]), torch.tensor([1]), torch.tensor([0.9]),
                       ["a", "b"], title="one box")
    assert [t.get_text() for t in fig.axes[0].texts] == ["b 0.90"]
    plt.close(fig)
