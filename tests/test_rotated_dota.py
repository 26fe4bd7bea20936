"""The DOTA-format loader (rtmdet_lesson.rotated.dota) and the minimum-area rectangle of a polygon."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from rtmdet_lesson.rotated import rbox_to_corners
from rtmdet_lesson.rotated.dota import DotaDataset, parse_dota_file
from rtmdet_lesson.rotated.geometry import min_area_rbox


def _brute_force_min_area(points: np.ndarray) -> float:
    """The smallest rectangle area over 20000 directions: an independent, slow oracle (from above: the grid
    misses the best direction by up to 4e-5 rad)."""
    best = math.inf
    for theta in np.linspace(0, math.pi / 2, 20000, endpoint=False):
        u = np.array([math.cos(theta), math.sin(theta)])
        v = np.array([-u[1], u[0]])
        best = min(best, np.ptp(points @ u) * np.ptp(points @ v))
    return best


def test_min_area_rbox_of_rectangles_in_any_corner_order():
    box = torch.tensor([[50.0, 40.0, 30.0, 10.0, 0.3]], dtype=torch.float64)
    corners = rbox_to_corners(box)[0]  # (4, 2)
    for start in range(4):
        for order in (corners.roll(start, 0), corners.roll(start, 0).flip(0)):
            torch.testing.assert_close(min_area_rbox(order[None]), box)


def test_min_area_rbox_of_quadrilaterals_against_a_slow_oracle():
    rng = np.random.default_rng(0)
    for _ in range(20):
        points = rng.uniform(0, 100, size=(4, 2))
        rbox = min_area_rbox(torch.from_numpy(points)[None])[0]
        area, oracle = float(rbox[2] * rbox[3]), _brute_force_min_area(points)
        assert oracle * (1 - 1e-3) <= area <= oracle + 1e-9
        assert float(rbox[2]) >= float(rbox[3]) and -math.pi / 2 <= float(rbox[4]) < math.pi / 2
        # every point lies in the rectangle (up to rounding)
        local = points - rbox[:2].numpy()
        c, s = math.cos(rbox[4]), math.sin(rbox[4])
        assert np.all(np.abs(local @ [c, s]) <= rbox[2].item() / 2 + 1e-9)
        assert np.all(np.abs(local @ [-s, c]) <= rbox[3].item() / 2 + 1e-9)


def test_min_area_rbox_by_hand():
    # a parallelogram 4 wide and 2 tall leaning by 1: the upright 5 x 2 box (area 10) beats any other direction
    parallelogram = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [5.0, 2.0], [1.0, 2.0]]])
    torch.testing.assert_close(min_area_rbox(parallelogram), torch.tensor([[2.5, 1.0, 5.0, 2.0, 0.0]]))
    assert min_area_rbox(torch.ones(1, 4, 2))[0, 2:4].tolist() == [0.0, 0.0]  # all points equal: no area


def _write(tmp_path, text, name="a", size=(40, 60)):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "annfiles").mkdir(exist_ok=True)
    Image.new("RGB", (size[1], size[0])).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "annfiles" / f"{name}.txt").write_text(text)
    return tmp_path / "annfiles" / f"{name}.txt"


def test_parse_dota_skips_headers_and_reads_the_flag(tmp_path):
    path = _write(tmp_path, "imagesource:GoogleEarth\ngsd:0.146\n10 10 30 10 30 20 10 20 plane 0\n\n"
                            "1 1 5 1 5 3 1 3 small-vehicle 1\n2 2 6 2 6 4 2 4 ship\n")
    objects = parse_dota_file(path)
    assert [(name, difficult) for _, name, difficult in objects] == [
        ("plane", False), ("small-vehicle", True), ("ship", False)]
    ds = DotaDataset(tmp_path / "images", tmp_path / "annfiles")
    assert ds.class_names == ["plane", "ship", "small-vehicle"]  # sorted when nothing names them
    image, target = ds[0]
    assert image.shape == (3, 40, 60) and image.dtype == torch.uint8
    torch.testing.assert_close(target["rboxes"][0], torch.tensor([20.0, 15.0, 20.0, 10.0, 0.0]))
    assert target["labels"].tolist() == [0, 2, 1] and target["difficult"].tolist() == [False, True, False]
    assert ds.label_to_category_id == {0: 1, 1: 2, 2: 3}


@pytest.mark.parametrize("line, message", [
    ("1 2 3 4 5 6 7 8", "line 1: expected"),
    ("1 2 3 4 5 6 7 x plane 0", "line 1: the first eight fields must be numbers"),
    ("1 2 3 4 5 6 7 8 plane 2", "line 1: the difficult flag must be 0 or 1"),
    ("1 2 3 4 5 6 7 nan plane 0", "line 1: corner coordinates must be finite"),
])
def test_malformed_lines_name_the_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        DotaDataset(tmp_path / "images", tmp_path / "annfiles")
    assert str(path) in str(error.value)


def test_unknown_class_missing_image_and_degenerate_polygon(tmp_path, caplog):
    _write(tmp_path, "0 0 4 0 4 2 0 2 ship 0\n0 0 1 1 2 2 3 3 ship 0\n")
    with pytest.raises(ValueError, match=r"classes \['ship'\] that are not among"):
        DotaDataset(tmp_path / "images", tmp_path / "annfiles", class_names=["plane"])
    ds = DotaDataset(tmp_path / "images", tmp_path / "annfiles", class_names=["plane", "ship"])
    assert len(ds.target(0)["rboxes"]) == 1 and "no area" in caplog.text  # the collinear one is skipped
    (tmp_path / "annfiles" / "b.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="b.txt has no image b.png"):
        DotaDataset(tmp_path / "images", tmp_path / "annfiles")
