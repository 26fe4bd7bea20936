"""The rotated sprites (rtmdet_lesson.data.rotated_sprites): deterministic, whole objects in their boxes, DOTA files."""

import json
import math

import numpy as np
import pytest
import torch

from rtmdet_lesson.__main__ import main as cli
from rtmdet_lesson.data.rotated_sprites import (
    DESCRIPTION,
    DIFFICULT_SIDE,
    _turn,
    generate_rotated_sprites,
    render_rotated_sample,
)
from rtmdet_lesson.data.sprites import SPRITE_CLASSES
from rtmdet_lesson.rotated import rbox_to_corners, regularize_le90
from rtmdet_lesson.rotated.dota import dota_split
from rtmdet_lesson.rotated.geometry import min_area_rbox


def test_render_is_deterministic_and_independent_of_the_split_size():
    a, b = render_rotated_sample(3, "val", 5), render_rotated_sample(3, "val", 5)
    assert np.array_equal(a.image, b.image) and len(a.objects) == len(b.objects)
    assert not np.array_equal(a.image, render_rotated_sample(3, "val", 6).image)


def test_objects_are_whole_apart_and_annotated_by_their_turned_rectangle():
    seen_quadrants, n = set(), 0
    for index in range(12):
        sample = render_rotated_sample(0, "train", index)
        h, w = sample.image.shape[:2]
        extents = []
        for obj in sample.objects:
            n += 1
            corners = obj.corners  # (4, 2)
            assert corners[:, 0].min() >= -1e-9 and corners[:, 0].max() <= w + 1e-9
            assert corners[:, 1].min() >= -1e-9 and corners[:, 1].max() <= h + 1e-9
            fitted = min_area_rbox(torch.from_numpy(corners)[None])[0]  # the same rectangle (squares: any side first)
            distances = torch.cdist(rbox_to_corners(fitted), torch.from_numpy(corners))  # (4, 4)
            assert float(distances.min(dim=0).values.max()) < 1e-9
            assert obj.difficult == (min(obj.rbox[2], obj.rbox[3]) < DIFFICULT_SIDE)
            seen_quadrants.add(int((obj.rbox[4] + math.pi) // (math.pi / 2)) % 4)
            extents.append((corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max()))
        for i, a in enumerate(extents):  # no two objects' axis-aligned extents overlap
            for b in extents[i + 1:]:
                assert a[2] <= b[0] + 1e-9 or b[2] <= a[0] + 1e-9 or a[3] <= b[1] + 1e-9 or b[3] <= a[1] + 1e-9
    assert n > 40 and seen_quadrants == {0, 1, 2, 3}


def test_turns_are_exact_rotations():
    rng = np.random.default_rng(0)
    for _ in range(50):
        cos, sin, m, n, q = _turn(rng)
        assert abs(cos * cos + sin * sin - 1) < 1e-15 and 0 <= n < m
        assert abs(math.remainder(math.atan2(sin, cos) - 2 * math.atan2(n, m) - q * math.pi / 2, 2 * math.pi)) < 1e-12


def test_the_cli_writes_dota_files_that_the_loader_reads_back(tmp_path):
    out = tmp_path / "rs"
    assert cli(["data", "sprites", "--rotated", "--out", str(out), "--train", "4", "--val", "2", "--seed", "1"]) == 0
    assert json.loads((out / "dataset.json").read_text())["description"] == DESCRIPTION
    assert sorted(p.name for p in (out / "train" / "annfiles").iterdir()) == [f"00000{i}.txt" for i in range(1, 5)]
    ds = dota_split(out, "train")
    assert ds.class_names == list(SPRITE_CLASSES) and len(ds) == 4
    for index in range(4):
        sample = render_rotated_sample(1, "train", index)
        image, target = ds[index]
        assert np.array_equal(image.permute(1, 2, 0).numpy(), sample.image)
        expected = regularize_le90(torch.tensor([o.rbox for o in sample.objects], dtype=torch.float64).reshape(-1, 5))
        torch.testing.assert_close(target["rboxes"][:, :4].double(), expected[:, :4], atol=0.02, rtol=0)  # 2 decimals
        assert target["labels"].tolist() == [o.label for o in sample.objects]
        assert target["difficult"].tolist() == [o.difficult for o in sample.objects]
    line = (out / "train" / "annfiles" / "000001.txt").read_text().splitlines()[0].split()
    assert len(line) == 10 and line[8] in SPRITE_CLASSES and line[9] in ("0", "1")


def test_regenerating_removes_stale_files_and_foreign_folders_are_refused(tmp_path, capsys):
    out = tmp_path / "rs"
    generate_rotated_sprites(out, n_train=3, n_val=1)
    generate_rotated_sprites(out, n_train=1, n_val=1)
    assert [p.name for p in (out / "train" / "images").iterdir()] == ["000001.png"]
    assert [p.name for p in (out / "train" / "annfiles").iterdir()] == ["000001.txt"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_rotated_sprites(out, n_train=1, n_val=1)
    coco = tmp_path / "coco"
    (coco / "train").mkdir(parents=True)
    assert cli(["data", "sprites", "--rotated", "--out", str(coco)]) == 2  # no marker: not ours
    assert "did not write" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--train"):
        generate_rotated_sprites(tmp_path / "new", n_train=-1)
