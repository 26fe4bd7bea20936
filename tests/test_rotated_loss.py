"""RTMDet-R assignment and losses (rtmdet_lesson.rotated.assigner / criterion)."""

import math

import pytest
import torch

from rtmdet_lesson import build_model
from rtmdet_lesson.assigner import DynamicSoftLabelAssigner, pad_targets
from rtmdet_lesson.criterion import flatten_levels
from rtmdet_lesson.priors import grid_priors
from rtmdet_lesson.rotated import rotated_iou
from rtmdet_lesson.rotated.assigner import RotatedDynamicSoftLabelAssigner
from rtmdet_lesson.rotated.criterion import compute_rotated_losses, decode_rboxes, rotated_iou_loss


def test_candidates_are_inside_the_rotated_box_not_its_hull():
    # a 45-degree bar from (4, 4) to (60, 60), 6 px thick: its axis-aligned hull holds 36 stride-8 priors,
    # the bar itself only the ones on the diagonal (the next row is 8 / sqrt(2) = 5.7 px away, > 3)
    priors = grid_priors([(8, 8)], [8])  # (64, 4) at (8j, 8i)
    bar = torch.tensor([[[32.0, 32.0, 56 * math.sqrt(2), 6.0, math.pi / 4]]])  # (B=1, G=1, 5)
    mask = RotatedDynamicSoftLabelAssigner().candidate_mask(priors[:, :2], bar, torch.ones(1, 1, dtype=torch.bool))
    inside = priors[mask[0], :2]
    assert inside.tolist() == [[8.0 * k, 8.0 * k] for k in range(1, 8)]


def test_inside_uses_mmrotates_eps():
    priors = torch.tensor([[10.0, 0.0], [9.995, 0.0], [9.98, 0.0]])
    box = torch.tensor([[[0.0, 0.0, 20.0, 20.0, 0.0]]])  # right edge at x = 10
    mask = RotatedDynamicSoftLabelAssigner().candidate_mask(priors, box, torch.ones(1, 1, dtype=torch.bool))
    assert mask[0].tolist() == [False, False, True]  # within 0.01 px of the boundary counts as outside


def _to_rbox(xyxy):
    return torch.cat([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2],
                      torch.zeros_like(xyxy[..., :1])], dim=-1)


def test_axis_aligned_boxes_assign_like_the_axis_aligned_assigner():
    # with every angle 0 (and no prior near a GT edge) the rotated assigner must decide exactly as RTMDet's
    g = torch.Generator().manual_seed(0)
    priors = grid_priors([(16, 16), (8, 8), (4, 4)], [8, 16, 32])  # (336, 4)
    n = len(priors)
    gt_xyxy = [torch.tensor([[10.5, 12.5, 70.5, 50.5], [60.5, 60.5, 120.5, 100.5]]),
               torch.tensor([[3.5, 3.5, 40.5, 90.5]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    logits = torch.randn(2, n, 3, generator=g)
    sizes = torch.rand(2, n, 2, generator=g) * 40 + 4
    pred_xyxy = torch.cat([priors[:, :2] - sizes / 2, priors[:, :2] + sizes / 2], dim=-1)  # (2, N, 4)
    boxes, lab, centers, valid = pad_targets(gt_xyxy, labels, [(b[:, :2] + b[:, 2:]) / 2 for b in gt_xyxy])
    plain = DynamicSoftLabelAssigner()(logits, pred_xyxy, priors, boxes, lab, valid, centers)
    rboxes, lab_r, centers_r, valid_r = pad_targets([_to_rbox(b) for b in gt_xyxy], labels,
                                                    [(b[:, :2] + b[:, 2:]) / 2 for b in gt_xyxy])
    rotated = RotatedDynamicSoftLabelAssigner()(logits, _to_rbox(pred_xyxy), priors, rboxes, lab_r, valid_r, centers_r)
    assert plain.num_pos >= 5
    assert torch.equal(plain.gt_index, rotated.gt_index) and torch.equal(plain.labels, rotated.labels)
    torch.testing.assert_close(plain.soft_targets, rotated.soft_targets, atol=1e-5, rtol=0)


def test_rotated_iou_loss_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.0], [0.0, 0.0, 10.0, 10.0, 0.0], [0.0, 0.0, 10.0, 10.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0, math.pi], [5.0, 0.0, 10.0, 10.0, 0.0], [50.0, 0.0, 10.0, 10.0, 0.0]])
    torch.testing.assert_close(rotated_iou_loss(a, b), torch.tensor([0.0, 1 - 1 / 3, 1 - 1e-6]), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model("rtmdet-r-tiny", num_classes=3, widen_factor=0.25, input_size=128)


def _targets():
    return [
        dict(rboxes=torch.tensor([[40.0, 50.0, 60.0, 20.0, 0.5], [90.0, 90.0, 40.0, 24.0, -1.0]]),
             labels=torch.tensor([0, 2])),
        dict(rboxes=torch.tensor([[64.0, 64.0, 80.0, 16.0, 1.3]]), labels=torch.tensor([1])),
    ]


def test_zero_ground_truths_give_zero_box_loss_and_gradients(small_model):
    x = torch.randn(2, 3, 128, 128)
    empty = [dict(rboxes=torch.zeros(0, 5), labels=torch.zeros(0, dtype=torch.int64))] * 2
    losses = small_model.loss(x, empty)
    assert losses["num_pos"] == 0 and losses["loss_bbox"].item() == 0.0 and losses["loss_cls"].item() > 0
    small_model.zero_grad()
    (losses["loss_cls"] + losses["loss_bbox"]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in small_model.head.rtm_ang.parameters())


def test_one_image_and_batch_assign_the_same(small_model):
    # per-image assignment: image 0 alone gets the positives it gets inside the batch
    small_model.eval()  # BN with running statistics: the outputs of an image do not depend on the batch
    x = torch.randn(2, 3, 128, 128)
    targets = _targets()
    with torch.no_grad():
        both = small_model.loss(x, targets)
        first = small_model.loss(x[:1], targets[:1])
        second = small_model.loss(x[1:], targets[1:])
    small_model.train()
    assert both["num_pos"] == first["num_pos"] + second["num_pos"] > 0


def test_gradients_are_finite_and_reach_the_angle(small_model):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 128, 128)
    small_model.zero_grad()
    losses = small_model.loss(x, _targets())
    (losses["loss_cls"] + losses["loss_bbox"]).backward()
    grads = [p.grad for p in small_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(conv.weight.grad.abs().sum() > 0 for conv in small_model.head.rtm_ang)


def test_overfitting_one_image_learns_the_rotated_box():
    # At the start every predicted box is near zero size, so the IoU soft targets and both losses are near 0;
    # the losses rise while the boxes grow into their GT and then fall. What must happen: the best-scoring
    # prior ends up predicting the GT's box, angle included.
    torch.manual_seed(0)
    model = build_model("rtmdet-r-tiny", num_classes=2, widen_factor=0.125, input_size=64)
    x = torch.randn(1, 3, 64, 64)
    gt = torch.tensor([[30.0, 34.0, 40.0, 14.0, 0.6]])
    targets = [dict(rboxes=gt, labels=torch.tensor([1]))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(36):
        losses = model.loss(x, targets)
        total = losses["loss_cls"] + losses["loss_bbox"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert sum(history[-3:]) / 3 < 0.5 * max(history), history
    with torch.no_grad():
        out = model(x)  # train mode: BN uses this batch's statistics, as in the steps above
        _, boxes = decode_rboxes(out, (64, 64))  # (1, N, 5)
        best = flatten_levels(out.cls_scores)[0, :, 1].argmax()
    assert rotated_iou(boxes[0, best][None], gt).item() > 0.7
    assert abs(boxes[0, best, 4].item() - 0.6) < 0.1


def test_bad_targets_are_named(small_model):
    x = torch.randn(1, 3, 128, 128)
    with pytest.raises(ValueError, match=r"'rboxes' \(G, 5\)"):
        small_model.loss(x, [dict(boxes=torch.zeros(1, 4), labels=torch.zeros(1, dtype=torch.int64))])
    with pytest.raises(ValueError, match="must be float"):
        small_model.loss(x, [dict(rboxes=torch.zeros(1, 4), labels=torch.zeros(1, dtype=torch.int64))])
    with pytest.raises(ValueError, match="0..2"):
        small_model.loss(x, [dict(rboxes=torch.ones(1, 5), labels=torch.tensor([3]))])


def test_direct_call_matches_model_loss(small_model):
    small_model.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a = small_model.loss(x, _targets()[:1])
        b = compute_rotated_losses(small_model(x), _targets()[:1], (128, 128))
    small_model.train()
    torch.testing.assert_close(a["loss_cls"], b["loss_cls"])
    torch.testing.assert_close(a["loss_bbox"], b["loss_bbox"])
