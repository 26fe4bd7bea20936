"""Colour jitter: RGB <-> HSV in OpenCV's 8-bit units and the reference's random HSV shift (chapter 07).

The reference's ``YOLOXHSVRandomAug`` (``mmdet/datasets/transforms/transforms.py``) converts with OpenCV, shifts
hue, saturation and value by random integer gains and converts back. Here the conversions are written in torch on
the (3, H, W) image; only the colours change, never the geometry, so the target passes through.
"""

from __future__ import annotations

import numpy as np
import torch


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> float HSV (3, H, W) in OpenCV's 8-bit units.

    Units: H = hue in degrees / 2, so one turn is 0..180; S = 255 * (max - min) / max; V = max, both 0..255.
    These are the units of the reference's gains (hue +-5 = +-10 degrees, saturation/value +-30 of 255).
    OpenCV rounds H, S and V to integers; this keeps them as floats, so a zero shift is an exact round trip.
    """
    x = image.float()
    r, g, b = x  # each (H, W)
    v = x.amax(dim=0)
    chroma = v - x.amin(dim=0)
    s = 255 * chroma / v.clamp(min=1e-6)  # 0 where v = 0, since chroma is 0 there too
    c = chroma.clamp_(min=1e-6)  # in place: chroma is not needed again
    # Which channel holds the maximum, as 0/1 masks (R first, then G, then B). The channels are whole numbers, so
    # 1 - (v - r) is 1 where r is the maximum and <= 0 elsewhere: arithmetic in place of torch.where and
    # comparisons, the same hue to the bit as the textbook formulas (tests/test_transforms.py, all 2^24 colours)
    in_r = (1 - (v - r)).clamp_(min=0)
    in_g = (1 - (v - g)).clamp_(min=0).mul_(1 - in_r)
    in_b = 1 - in_r - in_g
    numerator = in_r * (g - b) + in_g * (b - r) + in_b * (r - g)
    # sextant offsets 0, 2, 4, and one turn (6) where R is the maximum and G < B (the remainder mod 6)
    offset = (in_g * 2 + in_b * 4).add_(in_r * (b - g).clamp_(0, 1) * 6)
    h = numerator.div_(c).add_(offset).mul_(30)  # 60 degrees = 30 units; 0 for greys (every difference is 0)
    return torch.stack([h, s, v])  # (3, H, W)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Float HSV (3, H, W) in OpenCV 8-bit units -> uint8 RGB (3, H, W), rounded; H wraps mod 180."""
    h, s, v = hsv
    return _hsv_to_rgb(torch.remainder(h, 180), s, v)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``hsv_to_rgb`` of the three (H, W) planes, H in [0, 180); the channels R, G, B (n = 5, 3, 1) as one tensor."""
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device)[:, None, None]  # (3, 1, 1)
    k = h / 30 + n  # (3, H, W) in [1, 11); h / 30 is the sextant, in [0, 6)
    # the ramp min(k, 4 - k) clamped to [0, 1] of k mod 6, without the remainder: the ramp of k (zero for k >= 4)
    # plus the ramp of k - 6 (zero for k < 6), both written in place to reuse one buffer
    ramp = torch.minimum(k, 4 - k, out=torch.empty_like(k)).clamp_(0, 1)
    k -= 6
    ramp += torch.minimum(k, 4 - k).clamp_(0, 1)
    rgb = ramp.mul_(v * (s / 255)).neg_().add_(v)  # v - v * (s / 255) * ramp, (3, H, W)
    return rgb.round_().clamp_(0, 255).to(torch.uint8)


def hsv_shift(image: torch.Tensor, hue: float, saturation: float, value: float) -> torch.Tensor:
    """Shift a uint8 RGB image (3, H, W) in OpenCV HSV units: hue wraps mod 180, saturation and value clip to
    [0, 255].

    A zero shift returns a copy of the image without converting: the round trip is exact (tested on every colour).
    """
    if hue == saturation == value == 0:
        return image.clone()
    h, s, v = rgb_to_hsv(image)
    return _hsv_to_rgb(torch.remainder(h + hue, 180), (s + saturation).clamp(0, 255), (v + value).clamp(0, 255))


class RandomHSV:
    """The reference's HSV jitter: gains U(-1, 1) * (5, 30, 30), each zeroed with probability 0.5, truncated to
    integers (three uniform draws, then three integer draws)."""

    def __init__(self, hue_delta: int = 5, saturation_delta: int = 30, value_delta: int = 30):
        self.deltas = np.array([hue_delta, saturation_delta, value_delta], dtype=np.float64)

    def __call__(self, image, target, rng: np.random.Generator):
        gains = rng.uniform(-1, 1, 3) * self.deltas * rng.integers(0, 2, 3)
        hue, sat, val = np.trunc(gains)  # the reference casts to int16, which truncates toward zero
        return hsv_shift(image, float(hue), float(sat), float(val)), target
