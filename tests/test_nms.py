"""NMS against a deliberately plain Python loop, per class and over all boxes."""

import pytest
import torch

from rtmdet_lesson.nms import batched_nms, nms


def plain_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def plain_nms(boxes, scores, labels, thr):
    """Textbook greedy NMS: sort, keep the best, drop overlapping boxes of the same class, repeat."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable
    keep = []
    for i in order:
        if all(labels[i] != labels[j] or plain_iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def random_boxes(n, generator, size=100.0):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thr", [0.3, 0.6])
def test_batched_nms_matches_plain_loop(seed, thr):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(600, g)
    scores = torch.rand(600, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (600,), generator=g)
    keep = batched_nms(boxes, scores, labels, thr)
    assert keep.tolist() == plain_nms(boxes.tolist(), scores.tolist(), labels.tolist(), thr)


def test_nms_ignores_labels_and_matches_plain_loop():
    g = torch.Generator().manual_seed(7)
    boxes = random_boxes(200, g).float()
    scores = torch.rand(200, generator=g)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == plain_nms(boxes.tolist(), scores.tolist(), [0] * 200, 0.5)
    assert keep.dtype == torch.int64
    assert (scores[keep][:-1] >= scores[keep][1:]).all()  # highest score first


def test_hand_example():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    labels = torch.tensor([0, 0, 0, 1])
    # box 1 overlaps box 0 with IoU 81/119 = 0.68 > 0.6 -> dropped; box 3 is another class -> kept
    assert batched_nms(boxes, scores, labels, 0.6).tolist() == [3, 0, 2]
    assert batched_nms(boxes, scores, labels, 0.7).tolist() == [3, 0, 1, 2]  # 0.68 is not > 0.7
    assert nms(boxes, scores, 0.6).tolist() == [3, 2]  # class-agnostic: box 3 suppresses 0 and 1


def test_ties_keep_input_order_and_identical_boxes_collapse():
    boxes = torch.tensor([[0, 0, 4, 4.0]] * 3)
    assert nms(boxes, torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [0]


def test_empty_and_bad_shapes():
    keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    with pytest.raises(ValueError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)


@pytest.mark.parametrize("max_keep", [1, 5, 50, 1000])
def test_max_keep_equals_truncating_the_full_answer(max_keep):
    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(700, g)  # several blocks of 128
    scores = torch.rand(700, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (700,), generator=g)
    full = batched_nms(boxes, scores, labels, 0.4)
    assert batched_nms(boxes, scores, labels, 0.4, max_keep=max_keep).tolist() == full[:max_keep].tolist()
