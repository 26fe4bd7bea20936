"""The checks the chapters and exercises use: each kind of mistake gets a message that says what differs."""

import pytest
import torch
from torch import nn

from rtmdet_lesson import blocks
from rtmdet_lesson.checks import CheckFailed, check_function, check_module, check_same


@pytest.mark.parametrize("got, expected, message", [
    (torch.zeros(2, 3), torch.zeros(3, 2), r"expected \(3, 2\), got \(2, 3\) \(the same sizes in another order"),
    (torch.zeros(6), torch.zeros(2, 3), r"expected \(2, 3\), got \(6,\) \(the same number of values"),
    (torch.zeros(2, 3), torch.tensor([[0, 0, 0], [0, 0.5, 0.1]]),
     r"2 of 6 values differ; the first at index \(1, 1\): expected 0.5, got 0$"),
    (torch.zeros(3), torch.tensor([0.1, 0.0, 0.9]),
     r"the first at index \(0,\): expected 0.1, got 0; the largest difference, 0.9, at index \(2,\)"),
    (None, torch.zeros(1), "got None: does your code end with `return`"),
    ([torch.zeros(1)], [torch.zeros(1), torch.zeros(1)], "expected 2 items, got 1"),
    (torch.zeros(2, dtype=torch.long), torch.zeros(2), "wrong dtype: expected torch.float32, got torch.int64"),
    ({"a": torch.zeros(1)}, {"a": torch.zeros(1), "b": torch.zeros(1)}, "missing b"),
    ([torch.zeros(1), torch.ones(2)], [torch.zeros(1), torch.zeros(2)], r"x\[1\]: 2 of 2 values differ"),
    (3, 4, "expected 4, got 3"),
])
def test_check_same_says_what_differs(got, expected, message):
    with pytest.raises(CheckFailed, match=message):
        check_same(got, expected, "x")


def test_check_same_passes_within_float_rounding_and_equal_nans(capsys):
    expected = torch.tensor([1.0, float("nan"), -2.0])
    check_same(expected + 1e-7, expected, "x")
    assert capsys.readouterr().out == "x: correct\n"


def test_check_function_names_an_unwritten_exercise_and_compares_with_the_reference():
    def mine(x):
        raise NotImplementedError

    with pytest.raises(CheckFailed, match="mine is not written yet"):
        check_function(mine, torch.sin, torch.ones(2))
    check_function(torch.sin, torch.sin, torch.ones(2))
    with pytest.raises(CheckFailed, match="cos: 2 of 2 values differ"):
        check_function(torch.cos, torch.sin, torch.ones(2))


class ConvWithBias(nn.Module):  # the classic mistake: a conv bias in front of a BN
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)


def test_check_module_names_the_weights_that_differ():
    with pytest.raises(CheckFailed, match="1,200 parameters, the package's has 1,184; unexpected: conv.bias"):
        check_module(ConvWithBias(), blocks.ConvBNAct(8, 16, 3), torch.randn(1, 8, 8, 8))


def test_check_module_catches_a_wrong_forward_that_batchnorm_would_hide():
    class NoActivation(blocks.ConvBNAct):
        def forward(self, x):
            return self.bn(self.conv(x))

    x = torch.randn(1, 8, 8, 8)
    check_module(blocks.ConvBNAct(8, 16, 3), blocks.ConvBNAct(8, 16, 3), x)
    with pytest.raises(CheckFailed, match="NoActivation output: .* values differ"):
        check_module(NoActivation(8, 16, 3), blocks.ConvBNAct(8, 16, 3), x)
