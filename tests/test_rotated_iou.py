"""Rotated IoU (rtmdet_lesson.rotated.iou) against exact polygon intersection in float64 (shapely).

shapely is the independent oracle, used only here: each box becomes a polygon from its four corners
(computed in float64 from the same numbers), and IoU = intersection area / union area.
"""

import math

import pytest
import torch

from rtmdet_lesson.rotated import rotated_iou

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402


def _polygon(box) -> Polygon:
    cx, cy, w, h, a = (float(v) for v in box)
    c, s = math.cos(a), math.sin(a)
    u, v = (w / 2 * c, w / 2 * s), (-h / 2 * s, h / 2 * c)
    return Polygon([(cx + u[0] + v[0], cy + u[1] + v[1]), (cx + u[0] - v[0], cy + u[1] - v[1]),
                    (cx - u[0] - v[0], cy - u[1] - v[1]), (cx - u[0] + v[0], cy - u[1] + v[1])])


def oracle_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 5), (M, 5) -> (N, M) float64, exact up to float64 rounding."""
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    pa, pb = [_polygon(x) for x in a.double()], [_polygon(x) for x in b.double()]
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            inter = p.intersection(q).area
            union = p.area + q.area - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def random_boxes(n: int, seed: int, spread: float = 100.0, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n, 2, generator=g) * spread + offset
    sizes = torch.rand(n, 2, generator=g) * 60 + 0.5
    angles = (torch.rand(n, 1, generator=g) - 0.5) * 2 * math.pi
    return torch.cat([centers, sizes, angles], dim=1)


def test_random_pairs_match_the_oracle_float32_and_float64():
    a, b = random_boxes(60, seed=1), random_boxes(50, seed=2)
    expected = oracle_iou(a, b)
    assert (expected > 0.05).sum() > 100  # the test really exercises overlaps
    for dtype, tol in ((torch.float32, 2e-5), (torch.float64, 1e-10)):
        got = rotated_iou(a.to(dtype), b.to(dtype))
        assert got.dtype == dtype and got.shape == (60, 50)
        assert (got.double() - expected).abs().max().item() < tol


def test_aligned_is_the_diagonal():
    a, b = random_boxes(40, seed=3, spread=20), random_boxes(40, seed=4, spread=20)
    torch.testing.assert_close(rotated_iou(a, b, aligned=True), rotated_iou(a, b).diagonal())
    assert rotated_iou(a, b, aligned=True).shape == (40,)


def test_axis_aligned_boxes_match_plain_iou():
    from rtmdet_lesson.boxes import box_iou

    a, b = random_boxes(30, seed=5), random_boxes(30, seed=6)
    a[:, 4], b[:, 4] = 0.0, 0.0
    to_xyxy = lambda r: torch.cat([r[:, :2] - r[:, 2:4] / 2, r[:, :2] + r[:, 2:4] / 2], dim=1)  # noqa: E731
    torch.testing.assert_close(rotated_iou(a, b), box_iou(to_xyxy(a), to_xyxy(b)), atol=1e-5, rtol=0)


DEGENERATE = {
    # name: (box a, box b, expected IoU computed by hand)
    "identical": ([50.0, 50.0, 40.0, 20.0, 0.3], [50.0, 50.0, 40.0, 20.0, 0.3], 1.0),
    # mmcv's exact CPU box_iou_rotated returns 0.2523 here
    "angle plus pi": ([50.0, 50.0, 40.0, 20.0, 0.3], [50.0, 50.0, 40.0, 20.0, 0.3 + math.pi], 1.0),
    "angle minus pi": ([50.0, 50.0, 40.0, 20.0, -1.2], [50.0, 50.0, 40.0, 20.0, -1.2 - math.pi], 1.0),
    "w/h swapped, angle + pi/2": ([0.0, 0.0, 40.0, 20.0, 0.0], [0.0, 0.0, 20.0, 40.0, math.pi / 2], 1.0),
    "touching edges": ([0.0, 0.0, 10.0, 10.0, 0.0], [10.0, 0.0, 10.0, 10.0, 0.0], 0.0),
    "touching rotated": ([0.0, 0.0, 10.0, 10.0, 0.7], [10 * math.cos(0.7), 10 * math.sin(0.7), 10.0, 10.0, 0.7], 0.0),
    "half overlap": ([0.0, 0.0, 10.0, 10.0, 0.0], [5.0, 0.0, 10.0, 10.0, 0.0], 50 / 150),
    "containment": ([0.0, 0.0, 20.0, 20.0, 0.0], [1.0, -2.0, 4.0, 2.0, 0.9], 8 / 400),
    "contained in the other": ([1.0, -2.0, 4.0, 2.0, 0.9], [0.0, 0.0, 20.0, 20.0, 0.0], 8 / 400),
    "square turned 45 degrees": ([0.0, 0.0, 10.0, 10.0, 0.0], [0.0, 0.0, 10.0, 10.0, math.pi / 4],
                                 (200 * (math.sqrt(2) - 1)) / (200 - 200 * (math.sqrt(2) - 1))),
    "disjoint": ([0.0, 0.0, 10.0, 10.0, 0.3], [100.0, 0.0, 10.0, 10.0, 0.3], 0.0),
    # two 100 x 1 bars crossing at right angles: overlap 1, union 199 (mmcv's diff_iou_rotated_2d gives 0.142
    # for thin crossing bars where the truth is 0.112)
    "thin crossing bars": ([0.0, 0.0, 100.0, 1.0, 0.0], [0.0, 0.0, 100.0, 1.0, math.pi / 2], 1 / 199),
    "thin bars at 30 degrees": ([0.0, 0.0, 100.0, 1.0, 0.0], [0.0, 0.0, 100.0, 1.0, math.pi / 6],
                                2 / (200 - 2)),
    "thin identical": ([3.0, 4.0, 200.0, 0.01, 1.0], [3.0, 4.0, 200.0, 0.01, 1.0], 1.0),
    "zero width": ([0.0, 0.0, 0.0, 10.0, 0.2], [0.0, 0.0, 10.0, 10.0, 0.0], 0.0),
    "both zero area": ([0.0, 0.0, 0.0, 10.0, 0.2], [0.0, 0.0, 0.0, 10.0, 0.2], 0.0),
    "point boxes": ([5.0, 5.0, 0.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0, 1.0], 0.0),
    "large coordinates identical": ([1e4, 1e4, 37.0, 13.0, 0.4], [1e4, 1e4, 37.0, 13.0, 0.4 - math.pi], 1.0),
    "large coordinates half overlap": ([1e4, 2e4, 10.0, 10.0, 0.0], [1e4 + 5, 2e4, 10.0, 10.0, 0.0], 50 / 150),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_cases(name, dtype):
    a, b, expected = DEGENERATE[name]
    a = torch.tensor([a], dtype=dtype, requires_grad=True)
    b = torch.tensor([b], dtype=dtype, requires_grad=True)
    iou = rotated_iou(a, b)[0, 0]
    oracle = oracle_iou(a.detach(), b.detach())[0, 0].item()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert abs(oracle - expected) < tol, "the hand value disagrees with the oracle"  # inputs rounded to dtype
    assert abs(iou.item() - oracle) < tol, f"{name}: {iou.item()} != {oracle} (oracle)"
    iou.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_large_coordinates_random_float32():
    # random boxes around (1e4, 1e4): float32 holds the inputs to ~1e-3 px, the IoU must not lose more
    a, b = random_boxes(30, seed=7, spread=60, offset=1e4), random_boxes(30, seed=8, spread=60, offset=1e4)
    expected = oracle_iou(a, b)  # the same float32 numbers, in float64
    assert (rotated_iou(a, b).double() - expected).abs().max().item() < 2e-5


def test_many_near_identical_and_near_boundary_angles():
    # boxes compared with copies of themselves turned by pi, by tiny angles, and at the le90 boundary
    base = random_boxes(50, seed=9)
    turned = base.clone()
    turned[:, 4] += math.pi
    nudged = base.clone()
    nudged[:, 4] += 1e-4
    swapped = base[:, [0, 1, 3, 2, 4]].clone()
    swapped[:, 4] += math.pi / 2
    for other in (turned, nudged, swapped):
        got = rotated_iou(base, other, aligned=True).double()
        expected = oracle_iou(base, other).diagonal()
        assert (got - expected).abs().max().item() < 2e-5


def test_gradient_matches_finite_differences():
    a = torch.tensor([[0.0, 0.0, 10.0, 6.0, 0.3], [1.0, 2.0, 8.0, 3.0, -0.4]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[2.0, 1.0, 7.0, 9.0, 1.1], [0.0, 0.0, 9.0, 4.0, 0.2]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: rotated_iou(x, y, aligned=True), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: rotated_iou(x, y), (a, b))


def test_gradient_of_zero_area_and_disjoint_pairs_is_finite():
    a = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 10.0, 10.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [50.0, 50.0, 10.0, 10.0, 0.0]], requires_grad=True)
    iou = rotated_iou(a, b, aligned=True)
    assert iou.tolist() == [0.0, 0.0]
    iou.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_empty_inputs_and_device_dtype():
    assert rotated_iou(torch.zeros(0, 5), torch.zeros(3, 5)).shape == (0, 3)
    assert rotated_iou(torch.zeros(2, 5), torch.zeros(0, 5)).shape == (2, 0)
    assert rotated_iou(torch.zeros(0, 5), torch.zeros(0, 5), aligned=True).shape == (0,)
    a = random_boxes(4, seed=10).double()
    assert rotated_iou(a, a).dtype == torch.float64


def test_aligned_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="same shape"):
        rotated_iou(torch.zeros(3, 5), torch.zeros(2, 5), aligned=True)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        rotated_iou(torch.zeros(2, 3, 5), torch.zeros(2, 5))
