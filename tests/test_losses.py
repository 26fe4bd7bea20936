"""Quality focal, GIoU and Dice losses against hand-computed values."""

import math

import pytest
import torch

from rtmdet_lesson.fast.losses import dice_loss as fast_dice_loss
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


@pytest.mark.parametrize("dice", [dice_loss, fast_dice_loss], ids=["plain", "fast"])
def test_dice_empty_input_and_finite_gradient(dice):
    assert dice(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4)).shape == (0,)
    logits = torch.zeros(3, 5, 5, requires_grad=True)
    dice(logits, torch.zeros(3, 5, 5, dtype=torch.bool)).sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dice", [dice_loss, fast_dice_loss], ids=["plain", "fast"])
def test_dice_names_mismatched_shapes(dice):
    with pytest.raises(ValueError, match=r"same \(K, h, w\) shape"):
        dice(torch.zeros(2, 8, 8), torch.zeros(2, 16, 16, dtype=torch.bool))


# The fast Dice (rtmdet_lesson.fast.losses, chapter 09) against the plain formula


def test_dice_floor_keeps_the_loss_and_gradients_of_a_confident_mask_without_denormals():
    """A trained model's background logits lie between -100 and -35. The fast Dice's floor changes nothing above
    fp32 rounding, and where the unfloored gradient holds denormal floats (a CPU's slow path) it leaves none."""
    g = torch.Generator().manual_seed(0)
    foreground = torch.rand(6, 20, 20, generator=g) < 0.3
    background = -100 + torch.rand(6, 20, 20, generator=g) * 65  # (K, h, w) logits in [-100, -35]
    logits = torch.where(foreground, torch.rand(6, 20, 20, generator=g) * 8, background)
    logits[0, :2] = -35 + torch.rand(2, 20, generator=g) * 10  # a band around the floor, on both sides
    logits[1][foreground[1]] = -40.0  # a confidently missed object: its pixels lie below the floor too

    results = []
    for fn in (dice_loss, fast_dice_loss):
        x = logits.clone().requires_grad_()
        loss = fn(x, foreground)
        loss.sum().backward()
        results.append((loss.detach(), x.grad))
    (reference, reference_grad), (floored, floored_grad) = results
    smallest_normal = torch.finfo(torch.float32).tiny

    def denormals(t):
        return int(((t != 0) & (t.abs() < smallest_normal)).sum())

    torch.testing.assert_close(floored, reference, rtol=1e-6, atol=0)
    # what it zeroes is far below fp32 rounding of the batch's gradient sums (the missed object's is ~1e-19)
    assert (floored_grad - reference_grad).abs().max() < 1e-12 * reference_grad.abs().max()
    assert denormals(reference_grad) > 0 and denormals(floored_grad) == 0
    above = logits > -30
    assert torch.equal(floored_grad[above], reference_grad[above])  # above the floor: the same numbers


def formula_dice(x, t, eps=5e-6):
    """The Dice formula with the fast Dice's floor, for autograd to differentiate (the hand gradient's check)."""
    p, t = x.clamp(min=-30).sigmoid().flatten(1), t.flatten(1).to(x.dtype)
    return 1 - 2 * (p * t).sum(1) / ((p * p).sum(1) + eps + (t * t).sum(1) + eps)


@pytest.mark.parametrize("soft_targets", [False, True])
def test_dice_hand_gradient_passes_gradcheck_on_both_sides_of_the_floor(soft_targets):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 6, 5, generator=g, dtype=torch.float64) * 25).requires_grad_()  # many below -30
    targets = torch.rand(4, 6, 5, generator=g, dtype=torch.float64)
    targets = targets if soft_targets else targets < 0.4
    targets[3] = 0  # an instance whose target mask is empty
    assert (logits < -30).any() and (logits > 0).any()
    assert torch.autograd.gradcheck(lambda x: fast_dice_loss(x, targets), (logits,))


def test_dice_hand_gradient_matches_autograd_through_the_formula():
    """A crowded batch in fp32: tiny, empty and full masks, logits from -100 to 20 (a trained model's range)."""
    g = torch.Generator().manual_seed(2)
    targets = torch.zeros(5, 40, 30, dtype=torch.bool)
    targets[0, 10:12, 5:6] = True  # a 2-pixel object
    targets[2] = True  # an object that fills the map; instance 1 stays empty
    targets[3:] = torch.rand(2, 40, 30, generator=g) < 0.5
    logits = torch.where(targets, 5.0, -60.0) + torch.randn(5, 40, 30, generator=g) * 15
    results = []
    for fn in (formula_dice, fast_dice_loss):
        x = logits.clone().requires_grad_()
        loss = fn(x, targets)
        (loss * torch.arange(1.0, 6.0)).sum().backward()  # a different weight per instance
        results.append((loss.detach(), x.grad))
    (reference, reference_grad), (hand, hand_grad) = results
    torch.testing.assert_close(hand, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(hand_grad, reference_grad, rtol=1e-5, atol=1e-6 * float(reference_grad.abs().max()))
    assert torch.equal(hand_grad == 0, reference_grad == 0)  # zero exactly where the floor cuts the gradient
