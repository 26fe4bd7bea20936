"""ExpMomentumEMA (chapter 07): momentum values by hand, the update rule, buffers and resuming."""

import copy

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from rtmdet_lesson.ema import ExpMomentumEMA, ema_momentum
from rtmdet_lesson.figures.augment import ema_momentum_figure


def test_momentum_hand_values():
    # (1 - 0.0002) exp(-(1 + step) / 2000) + 0.0002
    assert ema_momentum(0) == pytest.approx(0.9998 * 0.9995001249791693 + 0.0002)  # exp(-1/2000)
    assert ema_momentum(1) == pytest.approx(0.9998 * 0.9990004998333750 + 0.0002)  # exp(-2/2000)
    assert ema_momentum(2000) == pytest.approx(0.9998 * 0.3676955262170047 + 0.0002)  # exp(-1.0005)
    assert ema_momentum(10**7) == pytest.approx(0.0002)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def test_first_update_copies_then_averages_with_m_of_the_step():
    model = net()
    ema = ExpMomentumEMA(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)  # step 0: a copy
    assert torch.equal(ema.module[0].weight, model[0].weight) and ema.steps == 1
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    ema.update(model)  # step 1
    m = ema_momentum(1)
    torch.testing.assert_close(ema.module[0].weight, (1 - m) * before + m * model[0].weight)
    assert not ema.module[0].weight.requires_grad and not ema.module.training


def test_constant_parameters_stay_constant():
    model = net()
    ema = ExpMomentumEMA(model)
    reference = copy.deepcopy(model.state_dict())
    for _ in range(50):
        ema.update(model)
    for name, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-6)


def test_buffers_are_averaged_and_counters_copied():
    model = net()
    ema = ExpMomentumEMA(model)
    ema.update(model)
    old_mean = ema.module[1].running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 8, 8) * 5 + 2)  # moves the BN running stats and counts one batch
    ema.update(model)
    m = ema_momentum(1)
    torch.testing.assert_close(ema.module[1].running_mean, (1 - m) * old_mean + m * model[1].running_mean)
    assert ema.module[1].num_batches_tracked.item() == 1
    plain = ExpMomentumEMA(model, update_buffers=False)
    plain.update(model)
    model(torch.randn(4, 3, 8, 8))
    plain.update(model)  # parameters averaged, buffers copied
    assert torch.equal(plain.module[1].running_mean, model[1].running_mean)


def test_state_dict_resumes_exactly():
    model = net()
    ema = ExpMomentumEMA(model)
    for k in range(3):
        with torch.no_grad():
            model[0].weight.add_(0.1 * k)
        ema.update(model)
    state = ema.state_dict()
    resumed = ExpMomentumEMA(net())
    resumed.load_state_dict(copy.deepcopy(state))
    assert resumed.steps == 3
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    resumed.update(model)
    for a, b in zip(ema.module.state_dict().values(), resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_unwraps_data_parallel_and_rejects_other_models():
    model = net()
    ema = ExpMomentumEMA(nn.DataParallel(model))
    ema.update(nn.DataParallel(model))
    assert set(ema.module.state_dict()) == set(model.state_dict())
    with pytest.raises(ValueError, match="does not match"):
        ema.update(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="momentum"):
        ExpMomentumEMA(model, momentum=0)


def test_momentum_figure():
    assert isinstance(ema_momentum_figure(steps=3000), Figure)


def test_update_follows_tensors_replaced_after_the_first_update():
    """The update finds its tensors in the modules each step (it caches where, not what): a buffer or parameter
    replaced by a new tensor, as ``model.to()`` does to buffers, is the one averaged."""
    model = net()
    ema = ExpMomentumEMA(model)
    ema.update(model)
    old_mean, old_bias = ema.module[1].running_mean.clone(), ema.module[0].bias.clone()
    model[1].running_mean = torch.full((4,), 3.0)
    model[0].bias = nn.Parameter(torch.full((4,), -1.0))
    ema.update(model)
    m = ema_momentum(1)
    torch.testing.assert_close(ema.module[1].running_mean, (1 - m) * old_mean + m * 3.0)
    torch.testing.assert_close(ema.module[0].bias, (1 - m) * old_bias - m)
    other = net()  # a second model of the same architecture is looked up afresh
    with torch.no_grad():
        other[0].weight.fill_(2.0)
    before = ema.module[0].weight.clone()
    ema.update(other)
    torch.testing.assert_close(ema.module[0].weight, (1 - ema_momentum(2)) * before + ema_momentum(2) * 2.0)
