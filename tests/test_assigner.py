"""The dynamic soft-label assigner against hand-computed costs and a deliberately plain per-image loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from rtmdet_lesson.assigner import (
    DynamicSoftLabelAssigner,
    assignment_costs,
    candidate_mask,
    center_of_mass,
    center_prior_cost,
    gather_candidates,
    iou_cost,
    pad_targets,
    soft_classification_cost,
)
from rtmdet_lesson.boxes import box_iou
from rtmdet_lesson.priors import grid_priors


# ---------------------------------------------------------------------------------------------------------------
# A plain, per-image, per-GT re-statement of the reference algorithm (DynamicSoftLabelAssigner.assign), with the full
# (candidates x GTs x classes) soft-label tensor. Slow and memory hungry on purpose: it is the oracle.
# ---------------------------------------------------------------------------------------------------------------
def plain_soft_cls_cost(logits, labels, ious):
    m, c = logits.shape
    g = labels.shape[0]
    soft = F.one_hot(labels, c).float()[None].repeat(m, 1, 1) * ious[..., None]  # (M, G, C)
    scores = logits[:, None, :].repeat(1, g, 1)  # (M, G, C)
    scale = soft - scores.sigmoid()
    return (F.binary_cross_entropy_with_logits(scores, soft, reduction="none") * scale.abs().pow(2)).sum(-1)


def plain_assign(logits, boxes, priors, gt_boxes, gt_labels, gt_centers=None, topk=13):
    n, c = logits.shape
    g = gt_boxes.shape[0]
    gt_index = torch.full((n,), -1, dtype=torch.int64)
    soft = torch.zeros(n)
    if g == 0:
        return gt_index, torch.full((n,), c), soft
    inside = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        px, py = priors[i, 0].item(), priors[i, 1].item()
        for j in range(g):
            x1, y1, x2, y2 = gt_boxes[j].tolist()
            if min(px - x1, py - y1, x2 - px, y2 - py) > 0:
                inside[i] = True
    cand = inside.nonzero()[:, 0]
    if len(cand) == 0:
        return gt_index, torch.full((n,), c), soft
    if gt_centers is None:
        gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    ious = box_iou(boxes[cand], gt_boxes)  # (M, G)
    dist = (priors[cand, None, :2] - gt_centers[None]).pow(2).sum(-1).sqrt() / priors[cand, 2:3]
    cost = plain_soft_cls_cost(logits[cand], gt_labels, ious) + (-torch.log(ious + 1e-7) * 3)
    cost = cost + torch.pow(10.0, dist - 3)
    k_cand = min(topk, len(cand))
    ks = torch.clamp(torch.topk(ious, k_cand, dim=0).values.sum(0).int(), min=1)
    matching = torch.zeros_like(cost, dtype=torch.bool)
    for j in range(g):
        matching[torch.topk(cost[:, j], int(ks[j]), largest=False).indices, j] = True
    for row in range(len(cand)):
        if matching[row].sum() > 1:
            best = int(cost[row].argmin())
            matching[row] = False
            matching[row, best] = True
    for row, prior in enumerate(cand.tolist()):
        if matching[row].any():
            j = int(matching[row].nonzero()[0, 0])
            gt_index[prior] = j
            soft[prior] = ious[row, j]
    labels = torch.where(gt_index >= 0, gt_labels[gt_index.clamp(min=0)], torch.full_like(gt_index, c))
    return gt_index, labels, soft


def random_image(gen, priors, g, c=6, size=(96, 128)):
    n = priors.shape[0]
    h, w = size
    xy = torch.rand(g, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
    wh = 6 + torch.rand(g, 2, generator=gen) * 40
    gt_boxes = torch.cat([xy, xy + wh], 1)
    gt_labels = torch.randint(0, c, (g,), generator=gen)
    # predictions: boxes around the priors with random sizes, logits around -3
    dist = 2 + torch.rand(n, 4, generator=gen) * 30
    boxes = torch.cat([priors[:, :2] - dist[:, :2], priors[:, :2] + dist[:, 2:]], 1)
    logits = torch.randn(n, c, generator=gen) * 2 - 3
    return logits, boxes, gt_boxes, gt_labels


def small_priors(size=(96, 128)):
    h, w = size
    return grid_priors([(h // s, w // s) for s in (8, 16, 32)])


def run_batch(images, priors, centers=None):
    logits = torch.stack([im[0] for im in images])
    boxes = torch.stack([im[1] for im in images])
    cts = centers or [(im[2][:, :2] + im[2][:, 2:]) / 2 for im in images]
    gt_boxes, gt_labels, gt_centers, valid = pad_targets([im[2] for im in images], [im[3] for im in images], cts)
    return DynamicSoftLabelAssigner()(logits, boxes, priors, gt_boxes, gt_labels, valid, gt_centers)


# ---------------------------------------------------------------------------------------------------------------
# Each cost term by hand
# ---------------------------------------------------------------------------------------------------------------
def test_candidates_are_strictly_inside_any_box():
    points = torch.tensor([[0.0, 0.0], [8.0, 8.0], [16.0, 8.0], [24.0, 24.0], [40.0, 40.0]])
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [20.0, 20.0, 30.0, 30.0]]])
    valid = candidate_mask(points, gt, torch.tensor([[True, True]]))
    # (0,0) and (16,8) lie on edges; (8,8) is inside box 0; (24,24) inside box 1; (40,40) outside
    assert valid.tolist() == [[False, True, False, True, False]]
    assert candidate_mask(points, gt, torch.tensor([[True, False]])).tolist() == [[False, True, False, False, False]]


def test_soft_cls_cost_hand_values():
    # one candidate, two classes, logits (0, log 3): sigmoid 0.5 and 0.75; one GT of class 1 with IoU 0.5
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    cost = soft_classification_cost(logits, torch.tensor([[1]]), torch.tensor([[[0.5]]]))
    neg0 = math.log(2.0) * 0.25  # BCE(0, 0) * 0.5^2
    pos1 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) * 0.25**2  # BCE(log 3, 0.5) * |0.5 - 0.75|^2
    assert cost.item() == pytest.approx(neg0 + pos1, rel=1e-5)


def test_soft_cls_cost_equals_plain_form():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 50, 80, generator=gen) * 3
    labels = torch.randint(0, 80, (2, 7), generator=gen)
    ious = torch.rand(2, 50, 7, generator=gen)
    cheap = soft_classification_cost(logits, labels, ious)
    for b in range(2):
        torch.testing.assert_close(cheap[b], plain_soft_cls_cost(logits[b], labels[b], ious[b]), rtol=1e-5, atol=1e-5)


def test_iou_and_center_costs_hand_values():
    torch.testing.assert_close(iou_cost(torch.tensor([1.0, 0.0])), torch.tensor([-math.log(1 + 1e-7), -math.log(1e-7)]))
    points = torch.tensor([[[8.0, 8.0], [32.0, 0.0]]])  # (1, 2, 2)
    strides = torch.tensor([[8.0, 32.0]])
    centers = torch.tensor([[[8.0, 32.0]]])  # 24 px below the first prior, 40 px from the second
    cost = center_prior_cost(points, strides, centers)
    torch.testing.assert_close(cost[0, :, 0], torch.tensor([10 ** (24 / 8 - 3), 10 ** (40 / 32 - 3)]))


def test_center_of_mass_pixel_indices_and_empty_mask():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True  # rows 1,2 cols 2..5 -> (3.5, 1.5)
    masks[1, 4, 7] = True
    torch.testing.assert_close(center_of_mass(masks), torch.tensor([[3.5, 1.5], [7.0, 4.0], [0.0, 0.0]]))


def test_gather_candidates_pads_with_one_past_the_end():
    valid = torch.tensor([[False, True, False, True], [True, False, False, False]])
    index, index_valid = gather_candidates(valid)
    assert index.tolist() == [[1, 3], [0, 4]]
    assert index_valid.tolist() == [[True, True], [True, False]]


# ---------------------------------------------------------------------------------------------------------------
# Dynamic k and conflicts on a hand-built case
# ---------------------------------------------------------------------------------------------------------------
def hand_case():
    """Two overlapping GTs, five priors at stride 8, predicted boxes chosen to give simple IoUs."""
    priors = torch.tensor([[8.0, 8.0, 8, 8], [16.0, 8.0, 8, 8], [24.0, 8.0, 8, 8], [32.0, 8.0, 8, 8], [0.0, 40, 8, 8]])
    gt_boxes = torch.tensor([[0.0, 0.0, 20.0, 16.0], [12.0, 0.0, 40.0, 16.0]])
    pred = torch.tensor(
        [
            [0.0, 0.0, 20.0, 16.0],  # IoU 1 with GT 0
            [12.0, 0.0, 40.0, 16.0],  # IoU 1 with GT 1
            [12.0, 0.0, 40.0, 16.0],  # IoU 1 with GT 1
            [0.0, 0.0, 20.0, 16.0],  # IoU 1 with GT 0 although its point is only inside GT 1
            [0.0, 30.0, 4.0, 34.0],  # not a candidate (outside both boxes)
        ]
    )
    logits = torch.full((5, 2), -4.0)
    return logits, pred, priors, gt_boxes, torch.tensor([0, 1])


def test_hand_case_costs_and_assignment():
    logits, pred, priors, gt_boxes, labels = hand_case()
    terms = assignment_costs(logits, pred, priors, gt_boxes, labels)
    assert terms.candidate_mask.tolist() == [True, True, True, True, False]
    assert terms.candidates.tolist() == [0, 1, 2, 3]
    iou01 = box_iou(gt_boxes[:1], gt_boxes[1:]).item()  # 8x16 overlap / (320 + 448 - 128) = 0.2
    assert iou01 == pytest.approx(0.2)
    expected_ious = torch.tensor([[1.0, iou01], [iou01, 1.0], [iou01, 1.0], [1.0, iou01]])
    torch.testing.assert_close(terms.ious, expected_ious)
    torch.testing.assert_close(terms.iou, -torch.log(expected_ious + 1e-7))
    centers = torch.tensor([[10.0, 8.0], [26.0, 8.0]])
    d = (priors[:4, None, :2] - centers[None]).norm(dim=-1) / 8
    torch.testing.assert_close(terms.center, 10 ** (d - 3))
    # dynamic k: sum of top-4 IoUs per GT = 1 + 1 + 0.2 + 0.2 = 2.4 -> k = 2 for both GTs
    result = DynamicSoftLabelAssigner()(
        logits[None], pred[None], priors, gt_boxes[None], labels[None], torch.tensor([[True, True]])
    )
    total = terms.total()
    picked0 = set(total[:, 0].topk(2, largest=False).indices.tolist())
    picked1 = set(total[:, 1].topk(2, largest=False).indices.tolist())
    assert picked0 == {0, 3} and picked1 == {1, 2}
    assert result.gt_index.tolist() == [[0, 1, 1, 0, -1]]
    assert result.labels.tolist() == [[0, 1, 1, 0, 2]]
    torch.testing.assert_close(result.soft_targets, torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]))


def test_conflict_goes_to_argmin_over_all_columns():
    # Three GTs; prior 0 is picked by GTs 0 and 1 (k = 1 each) but GT 2 has the lowest cost in its row:
    # the reference's argmin over the whole row hands it to GT 2, which never picked it.
    logits, pred, priors, gt_boxes, labels = hand_case()
    from rtmdet_lesson.assigner import dynamic_k_matching

    cost = torch.tensor([[[1.0, 2.0, 0.5], [5.0, 5.0, 0.1]]])  # (B=1, M=2, G=3)
    ious = torch.tensor([[[0.3, 0.3, 0.3], [0.2, 0.2, 0.2]]])  # k = int(0.5) -> clamped to 1
    matched = dynamic_k_matching(cost, ious, torch.ones(1, 2, 3, dtype=torch.bool))
    # GT 0 picks row 0 (1.0 < 5.0), GT 1 picks row 0 (2.0 < 5.0), GT 2 picks row 1 (0.1 < 0.5)
    assert matched.tolist() == [[2, 2]]


def test_dynamic_k_truncates_and_counts_all_candidates():
    from rtmdet_lesson.assigner import dynamic_k_matching

    cost = torch.arange(20.0).reshape(1, 20, 1)
    ious = torch.full((1, 20, 1), 0.2)  # top-13 sum = 2.6 -> k = 2
    matched = dynamic_k_matching(cost, ious, torch.ones(1, 20, 1, dtype=torch.bool))
    assert matched[0].tolist() == [0, 0] + [-1] * 18
    ious = torch.full((1, 3, 1), 0.9)  # only 3 candidates: sum 2.7 -> k = 2
    matched = dynamic_k_matching(cost[:, :3], ious, torch.ones(1, 3, 1, dtype=torch.bool))
    assert matched[0].tolist() == [0, 0, -1]


# ---------------------------------------------------------------------------------------------------------------
# Against the plain loop on random batches; batch vs single; edge cases
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_loop_on_random_batches(seed):
    gen = torch.Generator().manual_seed(seed)
    priors = small_priors()
    counts = [5, 0, 12, 1]
    images = [random_image(gen, priors, g) for g in counts]
    result = run_batch(images, priors)
    for b, im in enumerate(images):
        gt_index, labels, soft = plain_assign(im[0], im[1], priors, im[2], im[3])
        assert torch.equal(result.gt_index[b], gt_index), b
        assert torch.equal(result.labels[b], labels)
        torch.testing.assert_close(result.soft_targets[b], soft)
    assert result.num_pos > 0


def test_matches_plain_loop_with_mask_centres():
    gen = torch.Generator().manual_seed(5)
    priors = small_priors()
    im = random_image(gen, priors, 6)
    masks = torch.zeros(6, 96, 128, dtype=torch.bool)
    for j, (x1, y1, x2, y2) in enumerate(im[2].round().int().tolist()):
        masks[j, y1 : (y1 + y2) // 2 + 1, x1:x2] = True  # top half only: the centre of mass moves up
    centers = center_of_mass(masks)
    result = run_batch([im], priors, centers=[centers])
    gt_index, labels, soft = plain_assign(im[0], im[1], priors, im[2], im[3], gt_centers=centers)
    assert torch.equal(result.gt_index[0], gt_index)
    torch.testing.assert_close(result.soft_targets[0], soft)


def test_one_image_alone_equals_inside_a_batch():
    gen = torch.Generator().manual_seed(3)
    priors = small_priors()
    images = [random_image(gen, priors, g) for g in (3, 9, 1)]
    batch = run_batch(images, priors)
    for b, im in enumerate(images):
        alone = run_batch([im], priors)
        assert torch.equal(alone.gt_index[0], batch.gt_index[b])
        assert torch.equal(alone.labels[0], batch.labels[b])
        torch.testing.assert_close(alone.soft_targets[0], batch.soft_targets[b])


def test_zero_objects_everywhere_gives_background():
    gen = torch.Generator().manual_seed(0)
    priors = small_priors()
    logits, boxes, _, _ = random_image(gen, priors, 1)
    empty = torch.zeros(2, 0, 4)
    result = DynamicSoftLabelAssigner()(
        torch.stack([logits, logits]), torch.stack([boxes, boxes]), priors, empty,
        torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.bool),
    )
    assert result.num_pos == 0
    assert (result.labels == 6).all() and (result.soft_targets == 0).all()


def test_object_between_prior_points_gets_no_positive():
    priors = small_priors()
    gen = torch.Generator().manual_seed(0)
    logits, boxes, _, _ = random_image(gen, priors, 1)
    tiny = torch.tensor([[[1.0, 1.0, 7.0, 7.0]]])  # between the stride-8 points (0,0) and (8,8)
    result = DynamicSoftLabelAssigner()(
        logits[None], boxes[None], priors, tiny, torch.tensor([[2]]), torch.tensor([[True]])
    )
    assert result.num_pos == 0 and (result.labels == 6).all()
    terms = assignment_costs(logits, boxes, priors, tiny[0], torch.tensor([2]))
    assert terms.cls.shape == (0, 1) and not terms.candidate_mask.any()


def test_crowded_image_plain_vs_batched_agree():
    gen = torch.Generator().manual_seed(11)
    priors = small_priors()
    im = random_image(gen, priors, 60)
    result = run_batch([im], priors)
    gt_index, labels, soft = plain_assign(im[0], im[1], priors, im[2], im[3])
    assert torch.equal(result.gt_index[0], gt_index)
    torch.testing.assert_close(result.soft_targets[0], soft)


def test_float64_and_outputs_follow_inputs():
    gen = torch.Generator().manual_seed(4)
    priors = small_priors().double()
    logits, boxes, gt_boxes, gt_labels = random_image(gen, priors.float(), 4)
    result = DynamicSoftLabelAssigner()(
        logits[None].double(), boxes[None].double(), priors, gt_boxes[None].double(), gt_labels[None],
        torch.ones(1, 4, dtype=torch.bool),
    )
    assert result.soft_targets.dtype == torch.float64 and result.num_pos > 0


# ---------------------------------------------------------------------------------------------------------------
# Chapter 05's figures
# ---------------------------------------------------------------------------------------------------------------
def test_assignment_figures_run_and_cost_maps_match_the_terms():
    from matplotlib.figure import Figure

    from rtmdet_lesson.figures.assignment import assignment_figure, cost_maps, level_maps, positives_figure

    gen = torch.Generator().manual_seed(0)
    priors = small_priors()
    logits, boxes, gt_boxes, gt_labels = random_image(gen, priors, 3)
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8, generator=gen)
    sizes = [(12, 16), (6, 8), (3, 4)]
    maps = cost_maps(logits, boxes, priors, gt_boxes, gt_labels, None, object_index=1)
    terms = assignment_costs(logits, boxes, priors, gt_boxes, gt_labels)
    torch.testing.assert_close(maps["total"][terms.candidates], terms.total()[:, 1])
    assert torch.isnan(maps["total"][~terms.candidate_mask]).all()
    assert [m.shape for m in level_maps(maps["iou"], sizes)] == sizes
    fig = assignment_figure(image, logits, boxes, priors, sizes, gt_boxes, gt_labels, object_index=1, topk=5)
    assert isinstance(fig, Figure)
    result = run_batch([(logits, boxes, gt_boxes, gt_labels)], priors)
    assert isinstance(positives_figure(image, priors, gt_boxes, result.gt_index[0]), Figure)
