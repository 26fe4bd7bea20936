"""The generated sprites: COCO annotations that agree with their masks, determinism, occlusion, the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from rtmdet_lesson.__main__ import main as cli_main
from rtmdet_lesson.data.sprites import (
    IMAGE_SIDES,
    MAX_OBJECTS,
    MAX_SIDE,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    SPRITE_CLASSES,
    draw_sprite,
    generate_sprites,
    render_sample,
)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("sprites")
    generate_sprites(root, seed=3, n_train=20, n_val=5)
    return root


@pytest.fixture(scope="module")
def many():
    return [render_sample(0, "train", i) for i in range(80)]


def mask_box(mask: np.ndarray) -> list[float]:
    """Plain [x, y, w, h] of a mask, exclusive extent."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


def test_class_list_is_the_contract():
    assert SPRITE_CLASSES == ("portrait", "character", "slime", "chest", "coin")


def test_layout_and_categories(small):
    for split, n in (("train", 20), ("val", 5)):
        coco = json.loads((small / split / "annotations.json").read_text())
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
        assert [c["name"] for c in coco["categories"]] == list(SPRITE_CLASSES)
        assert {c["supercategory"] for c in coco["categories"]} == {"sprite"}
        assert [im["id"] for im in coco["images"]] == list(range(1, n + 1))
        assert [im["file_name"] for im in coco["images"]] == [f"{i:06d}.png" for i in range(1, n + 1)]
        assert sorted(p.name for p in (small / split / "images").iterdir()) == [f"{i:06d}.png" for i in range(1, n + 1)]
        assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))


def test_every_bbox_and_area_agree_with_the_decoded_mask(small):
    checked = 0
    for split in ("train", "val"):
        coco = json.loads((small / split / "annotations.json").read_text())
        sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
        for ann in coco["annotations"]:
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["segmentation"]["size"] == list(sizes[ann["image_id"]])
            mask = mask_utils.decode({**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()})
            assert ann["bbox"] == mask_box(mask)
            assert ann["area"] == int(mask.sum()) and isinstance(ann["area"], int)
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 5
            checked += 1
    assert checked > 50


def test_disk_matches_render_sample(small):
    coco = json.loads((small / "val" / "annotations.json").read_text())
    for im in coco["images"]:
        sample = render_sample(3, "val", im["id"] - 1)
        pixels = np.asarray(Image.open(small / "val" / "images" / im["file_name"]))
        np.testing.assert_array_equal(pixels, sample.image)
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert [a["category_id"] - 1 for a in anns] == [inst.label for inst in sample.instances]
        for a, inst in zip(anns, sample.instances, strict=True):
            decoded = mask_utils.decode({**a["segmentation"], "counts": a["segmentation"]["counts"].encode()})
            np.testing.assert_array_equal(decoded.astype(bool), inst.mask)


def test_same_seed_is_byte_identical_and_other_seeds_differ(tmp_path, small):
    generate_sprites(tmp_path / "again", seed=3, n_train=20, n_val=5)
    assert files_of(tmp_path / "again") == files_of(small)
    generate_sprites(tmp_path / "other", seed=4, n_train=20, n_val=5)
    other, same = files_of(tmp_path / "other"), files_of(small)
    assert other.keys() == same.keys()
    assert other["train/annotations.json"] != same["train/annotations.json"]
    assert sum(other[k] != same[k] for k in same) > 20


def test_a_sample_does_not_depend_on_the_split_size(tmp_path, small):
    generate_sprites(tmp_path, seed=3, n_train=4, n_val=0)
    assert (tmp_path / "train/images/000004.png").read_bytes() == (small / "train/images/000004.png").read_bytes()
    assert json.loads((tmp_path / "val/annotations.json").read_text())["images"] == []


def test_splits_differ():
    assert not np.array_equal(render_sample(0, "train", 0).image, render_sample(0, "val", 0).image)


def test_image_sizes_counts_and_object_sizes(many):
    shapes = [s.image.shape for s in many]
    assert all(h in IMAGE_SIDES and w in IMAGE_SIDES and c == 3 for h, w, c in shapes)
    assert any(h != w for h, w, _ in shapes) and any(h == w for h, w, _ in shapes)
    assert all(s.image.dtype == np.uint8 for s in many)
    counts = [len(s.instances) for s in many]
    assert 0 in counts and max(counts) <= MAX_OBJECTS and max(counts) >= 10
    labels = {inst.label for s in many for inst in s.instances}
    assert labels == set(range(len(SPRITE_CLASSES)))
    full_sides = [np.sqrt(inst.full_area) for s in many for inst in s.instances]
    assert max(full_sides) <= MAX_SIDE
    short_sides = np.array([min(b[2] - b[0], b[3] - b[1]) for s in many for b in (i.box for i in s.instances)])
    assert (short_sides >= 16).mean() > 0.6  # most objects hold stride-8 prior points...
    assert (short_sides < 16).sum() >= 5  # ...but some small ones stay


def test_occlusion_masks_are_disjoint_visible_and_kept_by_the_rule(many):
    occluded = 0
    for s in many:
        if not s.instances:
            continue
        stack = np.stack([inst.mask for inst in s.instances])  # (G, H, W)
        assert stack.sum(0).max() <= 1  # each pixel belongs to at most one instance
        for inst in s.instances:
            visible = int(inst.mask.sum())
            assert visible >= MIN_VISIBLE_PIXELS and visible >= MIN_VISIBLE_FRACTION * inst.full_area
            occluded += visible < inst.full_area
    assert occluded >= 20


def test_sprites_have_distinct_silhouettes():
    rng = np.random.default_rng(0)
    fill = {}
    for label, name in enumerate(SPRITE_CLASSES):
        fractions = []
        for _ in range(20):
            rgb, alpha = draw_sprite(label, rng)
            assert rgb.dtype == np.uint8 and rgb.shape == (*alpha.shape, 3) and alpha.dtype == bool
            assert 7 <= min(alpha.shape) and max(alpha.shape) <= 24
            fractions.append(alpha.mean())
        fill[name] = np.mean(fractions)
    assert fill["portrait"] == 1.0  # the frame is part of the object
    assert fill["chest"] > 0.9
    assert 0.7 < fill["coin"] < 0.85 and 0.6 < fill["slime"] < 0.85  # round shapes
    assert fill["character"] < 0.85  # non-convex: head, arms, legs


def test_bad_arguments():
    with pytest.raises(ValueError, match="label 5 is not a sprite class"):
        draw_sprite(5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="split 'test' is unknown"):
        render_sample(0, "test", 0)


def test_cli_writes_a_dataset_and_reports_it(tmp_path, capsys):
    assert cli_main(["data", "sprites", "--out", str(tmp_path), "--train", "5", "--val", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"sprites seed 0 -> {tmp_path}: train: 5 images,") and "val: 2 images" in line
    assert len(list((tmp_path / "train/images").glob("*.png"))) == 5
    assert len(json.loads((tmp_path / "val/annotations.json").read_text())["images"]) == 2

    assert cli_main(["data", "sprites", "--out", str(tmp_path), "--train", "3", "--val", "2"]) == 0
    assert "train: 3 images" in (line := capsys.readouterr().out) and "(2 stale images removed)" in line
    assert sorted(p.name for p in (tmp_path / "train/images").iterdir()) == ["000001.png", "000002.png", "000003.png"]

    assert cli_main(["data", "sprites", "--out", str(tmp_path), "--train", "-1"]) == 2  # one line, no traceback
    assert "--train must be 0 or more" in capsys.readouterr().err


def test_overlay_keeps_background_and_outlines_each_instance():
    from rtmdet_lesson.figures.sprites import instance_colors, overlay_instances

    image = np.full((6, 7, 3), 100, np.uint8)
    masks = np.zeros((2, 6, 7), bool)
    masks[0, 1:5, 1:5] = True  # 4x4 square: 12 border pixels, 4 inside
    masks[1, 0, 6] = True
    out = overlay_instances(torch.from_numpy(image).permute(2, 0, 1), masks, alpha=0.5)  # a (3, H, W) tensor
    assert out.shape == (6, 7, 3) and out.dtype == np.uint8
    untouched = ~masks.any(0)
    assert (out[untouched] == 100).all()
    colors = (instance_colors(2) * 255).round()
    np.testing.assert_array_equal(out[1, 1], colors[0])  # border: opaque
    np.testing.assert_array_equal(out[2, 2], np.round(0.5 * 100 + 0.5 * instance_colors(2)[0] * 255))  # inside
    np.testing.assert_array_equal(out[0, 6], colors[1])
    with pytest.raises(ValueError, match=r"masks must be \(G, H, W\)"):
        overlay_instances(image, masks[:, :5])


def test_figures_run_on_a_small_dataset(small):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from rtmdet_lesson.data.coco import sprites_split
    from rtmdet_lesson.figures.sprites import (
        class_counts_figure,
        object_size_figure,
        sample_grid_figure,
        sprite_gallery_figure,
    )

    splits = {s: sprites_split(small, s) for s in ("train", "val")}
    items = [splits["val"][i] for i in range(len(splits["val"]))]
    for fig in (
        sample_grid_figure(items, splits["val"].class_names, ncols=3),
        sprite_gallery_figure(per_class=3),
        class_counts_figure(splits),
        object_size_figure(splits),
    ):
        assert isinstance(fig, Figure)
        plt.close(fig)
    grid = sample_grid_figure(items[:2], SPRITE_CLASSES, ncols=4)
    assert len(grid.axes) == 4 and [len(ax.images) for ax in grid.axes] == [1, 1, 0, 0]
    plt.close(grid)
