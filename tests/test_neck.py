"""CSPNeXt-PAFPN (chapter 02): parameter counts, concatenation orders, the reduced laterals bottom-up."""

import pytest
import torch
import torch.nn.functional as F

from rtmdet_lesson.neck import CSPNeXtPAFPN

# size: (in channels, out channels, CSP blocks, neck parameters) from mmdetection's CSPNeXtPAFPN and configs
SIZES = {
    "tiny": ((96, 192, 384), 96, 1, 2_188_944),
    "s": ((128, 256, 512), 128, 1, 3_883_200),
    "m": ((192, 384, 768), 192, 2, 11_049_408),
    "l": ((256, 512, 1024), 256, 3, 23_746_688),
    "x": ((320, 640, 1280), 320, 4, 43_511_040),
}


@pytest.mark.parametrize("size", SIZES)
def test_parameters(size):
    in_channels, out_channels, blocks, params = SIZES[size]
    with torch.device("meta"):
        neck = CSPNeXtPAFPN(in_channels, out_channels, blocks)
    assert sum(p.numel() for p in neck.parameters()) == params
    assert all(len(layer.blocks) == blocks for layer in neck.top_down_blocks)


def _neck_and_inputs():
    torch.manual_seed(0)
    neck = CSPNeXtPAFPN((8, 16, 32), 12, 1).eval()
    feats = [torch.randn(2, c, s, 2 * s) for c, s in ((8, 8), (16, 4), (32, 2))]
    return neck, feats


def test_output_shapes_and_no_attention_or_residual():
    neck, feats = _neck_and_inputs()
    with torch.no_grad():
        outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 12, 8, 16), (2, 12, 4, 8), (2, 12, 2, 4)]
    for layer in list(neck.top_down_blocks) + list(neck.bottom_up_blocks):
        assert layer.attention is None and not layer.blocks[0].add_identity


def test_forward_follows_the_reference_steps():
    """A plain re-statement of CSPNeXtPAFPN.forward, step by step, with the module's own layers."""
    neck, (c3, c4, c5) = _neck_and_inputs()
    with torch.no_grad():
        r5 = neck.reduce_layers[0](c5)
        t4 = neck.top_down_blocks[0](torch.cat([F.interpolate(r5, scale_factor=2.0, mode="nearest"), c4], 1))
        r4 = neck.reduce_layers[1](t4)
        t3 = neck.top_down_blocks[1](torch.cat([F.interpolate(r4, scale_factor=2.0, mode="nearest"), c3], 1))
        n4 = neck.bottom_up_blocks[0](torch.cat([neck.downsamples[0](t3), r4], 1))  # reduced lateral R4
        n5 = neck.bottom_up_blocks[1](torch.cat([neck.downsamples[1](n4), r5], 1))  # reduced lateral R5
        expected = [neck.out_convs[0](t3), neck.out_convs[1](n4), neck.out_convs[2](n5)]
        got = neck([c3, c4, c5])
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)
        assert neck.bottom_up_blocks[0].main_conv.conv.in_channels == 2 * 8  # [down(T3) (c3), R4 (c3)]
        assert neck.bottom_up_blocks[1].main_conv.conv.in_channels == 2 * 16  # [down(N4) (c4), R5 (c4)]
