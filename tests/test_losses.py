"""Quality focal, GIoU and Dice losses against hand-computed values."""

import math

import pytest
import torch

from rtmdet_lesson.losses import dice_loss, giou_loss, quality_focal_loss


def sig(x):
    return 1 / (1 + math.exp(-x))


def bce(x, y):
    return -(y * math.log(sig(x)) + (1 - y) * math.log(1 - sig(x)))


def test_qfl_with_hard_targets_is_the_focal_loss():
    logits = torch.tensor([[1.5, -2.0], [0.3, -0.7]])
    labels = torch.tensor([0, 2])  # prior 0 positive for class 0; prior 1 background (label C = 2)
    loss = quality_focal_loss(logits, labels, torch.tensor([1.0, 0.0]))
    # focal loss with gamma 2 and no alpha: -(1 - p)^2 log p for the positive, -p^2 log(1 - p) for negatives
    p0 = -((1 - sig(1.5)) ** 2) * math.log(sig(1.5)) - sig(-2.0) ** 2 * math.log(1 - sig(-2.0))
    p1 = -(sig(0.3) ** 2) * math.log(1 - sig(0.3)) - sig(-0.7) ** 2 * math.log(1 - sig(-0.7))
    torch.testing.assert_close(loss, torch.tensor([p0, p1]))


def test_qfl_soft_target_hand_value_and_zero_at_the_target():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid 0.5 and 0.75
    loss = quality_focal_loss(logits, torch.tensor([1]), torch.tensor([0.5]))
    expected = bce(0.0, 0.0) * 0.25 + bce(math.log(3.0), 0.5) * 0.25**2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # a score equal to its quality target (and 0 elsewhere) costs nothing
    at_target = quality_focal_loss(torch.tensor([[-30.0, 0.0]]), torch.tensor([1]), torch.tensor([0.5]))
    assert at_target.item() == pytest.approx(0.0, abs=1e-10)


def test_qfl_gradients_finite_with_and_without_positives():
    logits = (torch.randn(20, 5) * 4).requires_grad_()
    labels = torch.full((20,), 5)
    labels[[2, 7]] = torch.tensor([1, 4])
    scores = torch.zeros(20)
    scores[[2, 7]] = torch.tensor([0.8, 0.1])
    quality_focal_loss(logits, labels, scores).sum().backward()
    assert torch.isfinite(logits.grad).all()
    logits.grad = None
    quality_focal_loss(logits, torch.full((20,), 5), torch.zeros(20)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_giou_loss_hand_values():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 2.0, 2.0]])
    # identical: 0; side by side with a 1-px gap: 1 - (0 - (3 - 2)/3) = 4/3; corner-touching: 1 + (4 - 2)/4
    torch.testing.assert_close(giou_loss(pred, target), torch.tensor([0.0, 4 / 3, 1.5]))


def test_giou_loss_has_a_gradient_without_overlap():
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    loss = giou_loss(pred, torch.tensor([[5.0, 0.0, 6.0, 1.0]]))
    assert loss.item() > 1
    loss.sum().backward()
    assert pred.grad[0, 2] < 0  # moving the right edge towards the target lowers the loss


def test_dice_hand_values():
    logits = torch.zeros(1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[True, True], [False, False]]])
    eps = 5e-6
    expected = 1 - 2 * 1.0 / (1.0 + eps + 2.0 + eps)
    torch.testing.assert_close(dice_loss(logits, target), torch.tensor([expected]))
    perfect = torch.where(target, 30.0, -30.0)
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    assert dice_loss(torch.full((1, 2, 2), -30.0), torch.zeros(1, 2, 2, dtype=torch.bool)).item() == pytest.approx(1.0)


def test_dice_empty_input_and_finite_gradient():
    assert dice_loss(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4)).shape == (0,)
    logits = torch.zeros(3, 5, 5, requires_grad=True)
    dice_loss(logits, torch.zeros(3, 5, 5, dtype=torch.bool)).sum().backward()
    assert torch.isfinite(logits.grad).all()
