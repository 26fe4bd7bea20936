"""Chapter 08's pictures: instances with labels that do not overlap, the decoding stages laid out without
empty panels, and the score-threshold / NMS-IoU widget's plain function."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from rtmdet_lesson.figures.instances import draw_instances, nms_figure, nms_survivors, plot_mask_decoding_stages
from rtmdet_lesson.nms import batched_nms
from rtmdet_lesson.postprocess import Instances
from rtmdet_lesson.preprocess import letterbox_geometry

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _candidates(m=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(m, 2, generator=g) * 150
    boxes = torch.cat([xy, xy + torch.rand(m, 2, generator=g) * 50 + 2], 1)  # (M, 4)
    return boxes, torch.rand(m, generator=g), torch.randint(0, 3, (m,), generator=g)


def _label_extents(ax) -> np.ndarray:
    renderer = ax.figure.canvas.get_renderer()
    return np.array([list(t.get_bbox_patch().get_window_extent(renderer).extents) for t in ax.texts])


def _overlapping_pairs(rects) -> int:
    count = 0
    for i in range(len(rects)):
        for j in range(i):
            w = min(rects[i, 2], rects[j, 2]) - max(rects[i, 0], rects[j, 0])
            h = min(rects[i, 3], rects[j, 3]) - max(rects[i, 1], rects[j, 1])
            count += w > 1e-6 and h > 1e-6
    return count


def test_nms_survivors_are_batched_nms_over_the_candidates_above_the_threshold():
    boxes, scores, labels = _candidates()
    above, kept = nms_survivors(boxes, scores, labels, score_thr=0.3, iou_thr=0.5)
    expected_above = torch.nonzero(scores > 0.3).flatten()
    assert sorted(above.tolist()) == expected_above.tolist()
    assert (scores[above].diff() <= 0).all()  # best first
    inside = batched_nms(boxes[expected_above], scores[expected_above], labels[expected_above], 0.5)
    assert torch.equal(kept, expected_above[inside])


def test_nms_survivors_behave_as_the_sliders_promise():
    boxes, scores, labels = _candidates()
    _, low = nms_survivors(boxes, scores, labels, 0.1, 0.5)
    _, high = nms_survivors(boxes, scores, labels, 0.6, 0.5)
    # a box's fate depends only on better boxes, so raising the threshold only drops the low-scoring survivors
    assert high.tolist() == [i for i in low.tolist() if scores[i] > 0.6]
    above, everyone = nms_survivors(boxes, scores, labels, 0.1, 1.0)  # IoU > 1 never happens
    assert torch.equal(everyone, above)
    sizes = [len(nms_survivors(boxes, scores, labels, 0.1, t)[1]) for t in (0.2, 0.4, 0.6, 0.8)]
    assert sizes == sorted(sizes)  # a looser IoU threshold suppresses fewer
    _, none = nms_survivors(boxes, scores, labels, 1.0, 0.5)
    assert none.shape == (0,) and none.dtype == torch.int64
    _, capped = nms_survivors(boxes, scores, labels, 0.1, 0.5, max_keep=5)
    assert torch.equal(capped, low[:5])


def test_nms_figure_has_a_class_legend_and_counts_in_its_titles():
    boxes, scores, labels = _candidates()
    image = torch.zeros(3, 210, 220, dtype=torch.uint8)
    fig = nms_figure(image, boxes, scores, labels, ["a", "b", "c"], score_thr=0.3, iou_thr=0.5)
    assert isinstance(fig, Figure)
    above, kept = nms_survivors(boxes, scores, labels, 0.3, 0.5)
    assert len(kept) > 100
    left, right = fig.axes
    assert left.get_title() == f"{len(above)} candidates with score > 0.30"
    assert right.get_title() == f"{len(kept)} survive NMS at IoU > 0.50; the best 100 are kept"
    assert len(left.patches) == len(above) and len(right.patches) == 100
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c"]
    assert len(right.texts) == min(12, len(kept))
    fig.canvas.draw()
    assert _overlapping_pairs(_label_extents(right)) == 0


def test_draw_instances_labels_do_not_overlap_on_a_crowded_image():
    g = torch.Generator().manual_seed(3)
    k, h0, w0 = 14, 160, 200
    xy = torch.rand(k, 2, generator=g) * 60 + 40  # crowded into the middle
    boxes = torch.cat([xy, xy + 30], 1)
    masks = torch.zeros(k, h0, w0, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        masks[i, y1:y2, x1:x2] = True
    scores = torch.linspace(0.95, 0.3, k)
    found = Instances(boxes, scores, torch.arange(k) % 5, masks, letterbox_geometry((h0, w0), (256, 256)))
    fig = draw_instances(torch.zeros(3, h0, w0, dtype=torch.uint8), found, ["p", "c", "s", "ch", "coin"],
                         score_thr=0.35)
    (ax,) = fig.axes
    shown = int((scores > 0.35).sum())
    assert len(ax.texts) == shown and len(ax.patches) == shown
    assert ax.texts[0].get_text() == "p 0.95"
    fig.canvas.draw()
    assert _overlapping_pairs(_label_extents(ax)) == 0
    empty = Instances(boxes[:0], scores[:0], torch.zeros(0, dtype=torch.int64), masks[:0], found.letterbox)
    assert isinstance(draw_instances(torch.zeros(3, h0, w0, dtype=torch.uint8), empty), Figure)


def test_plot_mask_decoding_stages_lays_out_every_panel():
    rng = np.random.default_rng(0)
    stages = {"prototypes": rng.normal(size=(8, 4, 5)), "layer0": rng.random((8, 4, 5)),
              "layer1": rng.random((8, 4, 5)), "relative_coords": rng.normal(size=(2, 4, 5)),
              "logit": rng.normal(size=(4, 5)), "upsampled": rng.random((32, 40)),
              "mask": np.zeros((30, 36), bool), "kernel": rng.normal(size=169), "prior": np.array([8.0, 16, 8, 8])}
    stages["mask"][5:12, 6:20] = True
    fig = plot_mask_decoding_stages(stages, torch.zeros(3, 30, 36, dtype=torch.uint8), title="t")
    assert len(fig.axes) == 3 * 8 + 6
    assert all(ax.images for ax in fig.axes)  # no empty panel
    bottom = fig.axes[-6:]
    assert bottom[-1].get_title() == "mask, zoomed" and bottom[-1].images[0].get_array().shape[:2] == (17, 27)
    for ax in (fig.axes[0], bottom[4]):
        ax.apply_aspect()
    small, big = fig.axes[0].get_position(), bottom[4].get_position()
    assert big.width * big.height > 4 * small.width * small.height  # the mask on the image is not tiny
    stages["mask"][:] = False
    empty = plot_mask_decoding_stages(stages)
    assert "empty mask" in empty.axes[-1].texts[0].get_text()
