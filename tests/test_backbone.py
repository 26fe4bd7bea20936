"""CSPNeXt (chapter 01): published per-size widths, depths and parameter counts (mmdetection's configs/rtmdet;
counts from building those configs)."""

import pytest
import torch

from rtmdet_lesson.backbone import CSPNeXt, scaled_depth

# size: (deepen, widen, stem channels, stage channels, blocks per stage, backbone parameters)
SIZES = {
    "tiny": (0.167, 0.375, (12, 12, 24), (48, 96, 192, 384), (1, 1, 1, 1), 2_348_700),
    "s": (0.33, 0.5, (16, 16, 32), (64, 128, 256, 512), (1, 2, 2, 1), 4_378_320),
    "m": (0.67, 0.75, (24, 24, 48), (96, 192, 384, 768), (2, 4, 4, 2), 12_279_432),
    "l": (1.0, 1.0, (32, 32, 64), (128, 256, 512, 1024), (3, 6, 6, 3), 26_138_912),
    "x": (1.33, 1.25, (40, 40, 80), (160, 320, 640, 1280), (4, 8, 8, 4), 47_569_560),
}
# parameters removed by dropping ChannelAttention, in millions (from building mmdetection's configs)
ATTENTION_M = {"tiny": 0.197, "s": 0.349, "m": 0.785, "l": 1.395, "x": 2.178}


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", SIZES)
def test_widths_depths_and_parameters(size):
    deepen, widen, stem, stages, blocks, params = SIZES[size]
    with torch.device("meta"):
        backbone = CSPNeXt(deepen, widen)
        plain = CSPNeXt(deepen, widen, channel_attention=False)
    assert tuple(conv.conv.out_channels for conv in backbone.stem) == stem
    for index, (channels, n) in enumerate(zip(stages, blocks, strict=True), start=1):
        stage = getattr(backbone, f"stage{index}")
        assert stage[0].conv.out_channels == channels and stage[0].conv.stride == (2, 2)
        assert len(stage[-1].blocks) == n
    assert backbone.out_channels == stages[1:]
    assert _count(backbone) == params
    assert round((params - _count(plain)) / 1e6, 3) == ATTENTION_M[size]


def test_stage_structure():
    backbone = CSPNeXt(0.167, 0.375)
    for index in (1, 2, 3):
        stage = getattr(backbone, f"stage{index}")
        assert len(stage) == 2 and stage[1].blocks[0].add_identity and stage[1].attention is not None
    stage4 = backbone.stage4
    assert len(stage4) == 3 and type(stage4[1]).__name__ == "SPPBottleneck"
    assert not stage4[2].blocks[0].add_identity  # the last stage has no residuals


def test_depth_rule_uses_python_round():
    assert [scaled_depth(n, 0.33) for n in (3, 6)] == [1, 2]
    assert [scaled_depth(n, 0.167) for n in (3, 6)] == [1, 1]
    assert scaled_depth(3, 0.1) == 1  # never below one block


def test_output_strides_non_square():
    backbone = CSPNeXt(0.167, 0.25).eval()
    with torch.no_grad():
        c3, c4, c5 = backbone(torch.randn(1, 3, 96, 160))
    assert c3.shape == (1, 64, 12, 20) and c4.shape == (1, 128, 6, 10) and c5.shape == (1, 256, 3, 5)
