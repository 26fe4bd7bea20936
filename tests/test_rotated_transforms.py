"""Rotated training augmentation (rtmdet_lesson.rotated.transforms): every step moves the pixels and the boxes
together. Checked on images with solid turned rectangles painted in: after each step, the painted pixels must lie
inside the transformed boxes and fill them."""

import math

import numpy as np
import pytest
import torch

from rtmdet_lesson.data.rotated_sprites import _paste_turned
from rtmdet_lesson.rotated import points_in_rboxes
from rtmdet_lesson.rotated.transforms import (
    RotatedTrainPipeline,
    flip_rotated,
    letterbox_rotated,
    quarter_turn,
)

BOXES = [(60.0, 40.0, 50.0, 20.0, 3, 4), (130.0, 90.0, 36.0, 30.0, -12, 5)]  # cx, cy, w, h and (cos, sin) * 5 / 13


def _sample(height=120, width=200):
    """A black image with two solid rectangles turned by exact (cos, sin) pairs, and their le90 targets."""
    image = np.zeros((height, width, 3), np.uint8)
    rboxes = []
    for k, (cx, cy, w, h, c, s) in enumerate(BOXES):
        r = math.hypot(c, s)
        rgb = np.zeros((int(h), int(w), 3), np.uint8)
        rgb[..., k] = 200  # box k is painted in channel k only
        _paste_turned(image, rgb, np.ones((int(h), int(w)), bool), cx, cy, c / r, s / r)
        rboxes.append([cx, cy, w, h, math.atan2(s, c)])
    target = {"rboxes": torch.tensor(rboxes), "labels": torch.tensor([0, 1]), "difficult": torch.tensor([False, True])}
    return torch.from_numpy(image.transpose(2, 0, 1).copy()), target


def _check_boxes_cover_paint(image, target, tolerance=1.5, fill=0.12):
    """Box k's paint (channel k) lies inside the box (sides grown by ``tolerance`` px: resizing blends the edges)
    and, counted at half strength, fills it up to a share ``fill`` of its area."""
    h, w = image.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=1).float() + 0.5  # (H*W, 2) pixel centres
    for k, rbox in enumerate(target["rboxes"]):
        paint = image[k].flatten().int() - image[2].flatten().int()  # (H*W,) blue is never painted: grey padding is 0
        grown = rbox.clone()
        grown[2:4] += 2 * tolerance
        inside = points_in_rboxes(points, grown[None])[:, 0]
        assert not bool(((paint > 0) & ~inside).any()), f"box {k}: painted pixels outside {rbox.tolist()}"
        area = float(rbox[2] * rbox[3])
        filled = int((paint >= 100).sum())
        assert abs(filled - area) < fill * area, (filled, area)


def test_painted_sample_is_consistent():
    _check_boxes_cover_paint(*_sample())


@pytest.mark.parametrize("direction", ["horizontal", "vertical", "diagonal"])
def test_flips_carry_the_angle(direction):
    image, target = flip_rotated(*_sample(), direction)
    _check_boxes_cover_paint(image, target)
    assert bool((target["rboxes"][:, 4] >= -math.pi / 2).all() and (target["rboxes"][:, 4] < math.pi / 2).all())


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_quarter_turns(turns):
    image, target = quarter_turn(*_sample(), turns)
    assert image.shape[1:] == ((200, 120) if turns % 2 else (120, 200))
    _check_boxes_cover_paint(image, target)


def test_quarter_turn_by_hand():
    # a (W=10, H=4) image: the point (x, y) = (1, 1) goes to (H - y, x) = (3, 1); the angle turns by pi/2
    image = torch.zeros(3, 4, 10, dtype=torch.uint8)
    target = {"rboxes": torch.tensor([[1.0, 1.0, 4.0, 2.0, 0.0]]), "labels": torch.tensor([0])}
    turned, out = quarter_turn(image, target, 1)
    assert turned.shape == (3, 10, 4)
    torch.testing.assert_close(out["rboxes"], torch.tensor([[3.0, 1.0, 4.0, 2.0, -math.pi / 2]]))


def test_letterbox_scales_boxes_with_the_image():
    image, target = _sample()
    canvas, out, box = letterbox_rotated(image, target, (160, 160))
    assert canvas.shape == (3, 160, 160) and box.scale_x == pytest.approx(0.8)
    torch.testing.assert_close(out["rboxes"][0, :4], torch.tensor([48.0, 32.0, 40.0, 16.0]))
    _check_boxes_cover_paint(canvas, out, tolerance=2.0, fill=0.2)


def test_pipeline_is_deterministic_and_keeps_training_keys():
    pipeline = RotatedTrainPipeline((224, 224))
    image, target = _sample()
    target["polygons"] = torch.zeros(2, 4, 2)
    runs = [pipeline(image, target, np.random.default_rng(3)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1]["rboxes"], runs[1][1]["rboxes"])
    assert set(runs[0][1]) == {"rboxes", "labels", "difficult"} and runs[0][0].shape == (3, 224, 224)
    for seed in range(8):  # every random choice keeps pixels and boxes together
        _check_boxes_cover_paint(*pipeline(image, target, np.random.default_rng(seed)), tolerance=2.0, fill=0.2)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="rboxes"):
        RotatedTrainPipeline((64, 64))(torch.zeros(3, 8, 8, dtype=torch.uint8), {"labels": torch.zeros(0)},
                                       np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8 .* DotaDataset"):  # the axis-aligned pipelines' image check
        RotatedTrainPipeline((64, 64))(torch.zeros(3, 8, 8), {"rboxes": torch.zeros(0, 5), "labels": torch.zeros(0)},
                                       np.random.default_rng(0))
    with pytest.raises(ValueError, match="square"):
        RotatedTrainPipeline((64, 96))
    with pytest.raises(ValueError, match="direction"):
        flip_rotated(*_sample(), "sideways")
