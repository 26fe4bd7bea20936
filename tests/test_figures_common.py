"""The shared picture helpers: one image conversion, one colour list, one overlay, labels that do not overlap."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from rtmdet_lesson.figures.common import (
    draw_box_labels,
    image_hwc,
    instance_colors,
    mask_outline,
    overlay_instances,
    place_labels,
)

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _overlaps(rects: np.ndarray) -> list[tuple[int, int]]:
    pairs = []
    for i in range(len(rects)):
        for j in range(i):
            w = min(rects[i, 2], rects[j, 2]) - max(rects[i, 0], rects[j, 0])
            h = min(rects[i, 3], rects[j, 3]) - max(rects[i, 1], rects[j, 1])
            if w > 1e-9 and h > 1e-9:
                pairs.append((j, i))
    return pairs


def test_image_hwc_reads_every_layout_to_the_same_array():
    hwc = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for image in (hwc, torch.from_numpy(hwc).permute(2, 0, 1), torch.from_numpy(hwc), Image.fromarray(hwc)):
        out = image_hwc(image)
        assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
        np.testing.assert_array_equal(out, hwc)
    floats = image_hwc(torch.from_numpy(hwc).permute(2, 0, 1).double() + 0.4)  # arithmetic left it float
    np.testing.assert_array_equal(floats, hwc)
    np.testing.assert_array_equal(image_hwc(hwc.astype(np.float32) * 2)[hwc > 127], 255)  # clipped
    with pytest.raises(ValueError, match="channels-first"):
        image_hwc(hwc.transpose(2, 0, 1).copy())


def test_instance_colors_cycle_tab10():
    colors = instance_colors(12)
    assert colors.shape == (12, 3) and (colors >= 0).all() and (colors <= 1).all()
    np.testing.assert_array_equal(colors[10], colors[0])
    assert len({tuple(c) for c in colors[:10]}) == 10
    assert instance_colors(0).shape == (0, 3)


def test_mask_outline_is_the_border_including_the_image_edge():
    mask = np.zeros((5, 6), bool)
    mask[1:4, 1:5] = True  # 3x4 block: 10 border pixels, 2 inside
    outline = mask_outline(mask)
    assert outline.sum() == 10 and not outline[2, 2] and not outline[2, 3] and outline[1, 1]
    full = np.ones((3, 3), bool)
    assert mask_outline(full).sum() == 8  # the image edge counts as outside: only the centre is inner


def test_overlay_fills_outlines_and_takes_given_colours():
    image = np.full((6, 7, 3), 100, np.uint8)
    masks = np.zeros((2, 6, 7), bool)
    masks[0, 1:5, 1:5] = True
    masks[1, 0, 6] = True
    red_blue = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    out = overlay_instances(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(masks), 0.5, red_blue)
    assert (out[~masks.any(0)] == 100).all()
    np.testing.assert_array_equal(out[1, 1], [255, 0, 0])  # border: opaque
    np.testing.assert_array_equal(out[2, 2], [178, 50, 50])  # inside: half image, half colour
    np.testing.assert_array_equal(out[0, 6], [0, 0, 255])
    with pytest.raises(ValueError, match="2 colours for 1 masks"):
        overlay_instances(image, masks[:1], colors=red_blue)


def test_place_labels_on_a_free_image_puts_each_label_above_its_box():
    boxes = np.array([[10, 20, 30, 40], [60, 20, 90, 40]], float)
    places = place_labels(boxes, [(15, 5), (15, 5)], (100, 100))
    np.testing.assert_allclose(places, [[10, 15, 25, 20], [60, 15, 75, 20]])


def test_place_labels_never_overlap_on_a_crowded_image():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 60, (25, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (25, 2))], 1)  # 25 boxes piled into a 90x90 corner
    sizes = [(rng.uniform(15, 30), 6.0) for _ in boxes]
    places = place_labels(boxes, sizes, (120, 160))
    assert places.shape == (25, 4)
    assert _overlaps(places) == []
    assert (places[:, :2] >= 0).all() and (places[:, 2] <= 160).all() and (places[:, 3] <= 120).all()
    np.testing.assert_allclose(places[:, 2:] - places[:, :2], sizes)
    # the first (best) label keeps its first choice: just above its box
    np.testing.assert_allclose(places[0, :2], [boxes[0, 0], max(boxes[0, 1] - 6, 0)])


def test_place_labels_same_box_twice_stacks_the_labels():
    boxes = np.array([[20, 30, 50, 60]] * 3, float)
    places = place_labels(boxes, [(20, 5)] * 3, (100, 100))
    assert _overlaps(places) == []
    assert places[:, 1].tolist() == [25, 30, 60]  # above, inside the top corner, below


def test_draw_box_labels_do_not_overlap_on_screen():
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(np.zeros((100, 120, 3), np.uint8))
    boxes = torch.tensor([[10.0, 10, 40, 40], [12, 12, 42, 42], [14, 14, 44, 44], [70, 60, 110, 95]])
    texts = ["character 0.91", "slime 0.88", "portrait 0.50", "coin 0.30"]
    artists = draw_box_labels(ax, boxes, texts, instance_colors(4), (100, 120))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    extents = np.array([list(a.get_bbox_patch().get_window_extent(renderer).extents) for a in artists])
    assert [a.get_text() for a in artists] == texts
    assert _overlaps(extents) == []
    assert draw_box_labels(ax, boxes[:0], [], instance_colors(0), (100, 120)) == []
