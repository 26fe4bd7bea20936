"""Learning-rate schedule and parameter groups (chapter 07) against hand-computed values."""

import math

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from rtmdet_lesson.figures.augment import lr_schedule_figure
from rtmdet_lesson.schedule import build_lr_scheduler, lr_at, param_groups

RUN = dict(flat_until_iter=5000, total_iters=10000)  # warm-up 1000 (the default), cosine over the last 5000


def test_lr_hand_values():
    assert lr_at(0, 0.004, **RUN) == pytest.approx(4e-8)  # 1e-5 x base
    assert lr_at(500, 0.004, **RUN) == pytest.approx(0.002002021981981982)  # 0.004 (1e-5 + (1 - 1e-5) 500 / 999)
    assert lr_at(999, 0.004, **RUN) == pytest.approx(0.004)  # warm-up done at its last iteration
    assert lr_at(1000, 0.004, **RUN) == 0.004 and lr_at(3000, 0.004, **RUN) == 0.004 == lr_at(5000, 0.004, **RUN)
    assert lr_at(5001, 0.004, **RUN) == pytest.approx(0.003999999624955045)
    assert lr_at(7500, 0.004, **RUN) == pytest.approx(0.0021)  # cos(pi/2) = 0: halfway to 0.05 x base
    assert lr_at(9999, 0.004, **RUN) == pytest.approx(0.000200000375044955)  # last iteration: just above eta_min
    assert lr_at(10000, 0.004, **RUN) == pytest.approx(0.0002)


def test_warmup_matches_mmengine_chainable_form():
    """mmengine's LinearLR multiplies the previous lr by 1 + (1 - s) / (T s + (i - 1)(1 - s)), T = end - 1."""
    s, total = 1e-5, 999
    lr = 0.004 * s
    for i in range(1, 1000):
        lr *= 1 + (1 - s) / (total * s + (i - 1) * (1 - s))
        assert lr_at(i, 0.004, **RUN) == pytest.approx(lr, rel=1e-9)


def test_cosine_matches_torch_cosine_annealing():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.004)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=400, eta_min=0.0002)
    for t in range(400):
        lr = lr_at(200 + t, 0.004, flat_until_iter=200, total_iters=600, warmup_iters=50)
        assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
        opt.step()
        cosine.step()


def test_lambda_lr_follows_lr_at_and_resumes():
    def make():
        opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=0.01)
        return opt, build_lr_scheduler(opt, flat_until_iter=60, total_iters=100, warmup_iters=20)

    opt, sched = make()
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [lr_at(i, 0.01, flat_until_iter=60, total_iters=100, warmup_iters=20) for i in range(100)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    opt2, sched2 = make()
    state = sched.state_dict()
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 100 and sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_lr_rejects_bad_arguments():
    with pytest.raises(ValueError, match="flat_until_iter"):
        lr_at(0, 0.004, flat_until_iter=200, total_iters=100)
    with pytest.raises(ValueError, match="iteration"):
        lr_at(-1, 0.004, **RUN)


class SharedConvNet(nn.Module):
    """A conv used twice (shared across levels, as the reference's head towers), norms and biases."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Conv2d(3, 4, 3, bias=False)
        self.levels = nn.ModuleList([nn.Sequential(self.shared, nn.BatchNorm2d(4)) for _ in range(2)])
        self.pred = nn.Conv2d(4, 2, 1)  # weight decays, bias does not
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_param_groups_split_norms_and_biases_and_list_shared_params_once():
    net = SharedConvNet()
    decay, no_decay = param_groups(net, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda params: sorted(id(p) for p in params)  # noqa: E731
    bns = [level[1] for level in net.levels]
    assert ids(decay["params"]) == ids([net.shared.weight, net.pred.weight, net.fc.weight])
    expected_no_decay = [net.pred.bias, net.fc.bias, net.gn.weight, net.gn.bias, net.ln.weight, net.ln.bias]
    expected_no_decay += [p for bn in bns for p in (bn.weight, bn.bias)]
    assert ids(no_decay["params"]) == ids(expected_no_decay)
    torch.optim.AdamW([decay, no_decay], lr=1e-3)  # raises if a parameter appeared in two groups


def test_schedule_figure():
    assert isinstance(lr_schedule_figure(total_iters=300, flat_until_iter=150, warmup_iters=30), Figure)
    assert math.isclose(lr_at(299, 1.0, flat_until_iter=150, total_iters=300, warmup_iters=30), 0.05, abs_tol=2e-4)
