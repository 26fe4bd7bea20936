"""Building blocks of CSPNeXt (chapter 01), checked against hand values and plain functional versions."""

import math

import torch
import torch.nn.functional as F

from rtmdet_lesson.blocks import (
    ChannelAttention,
    ConvBNAct,
    CSPLayer,
    CSPNeXtBlock,
    DepthwiseSeparableConv,
    SPPBottleneck,
    init_backbone_neck_weights,
)


def _randomize_bn(module, seed=0):
    """Give every BN non-trivial statistics so that eval-mode outputs test the whole computation."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module.eval()


def _conv_bn_act(x, block):
    conv, bn = block.conv, block.bn
    y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, groups=conv.groups)
    return F.silu(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))


def test_conv_bn_act_is_conv_without_bias_then_bn_then_silu():
    block = _randomize_bn(ConvBNAct(4, 6, 3, stride=2))
    assert block.conv.bias is None and block.conv.padding == (1, 1)
    assert block.bn.momentum == 0.1 and block.bn.eps == 1e-5
    x = torch.randn(2, 4, 9, 7)
    out = block(x)
    assert out.shape == (2, 6, 5, 4)
    torch.testing.assert_close(out, _conv_bn_act(x, block))


def test_depthwise_separable_has_bn_and_silu_after_both_convs():
    block = _randomize_bn(DepthwiseSeparableConv(4, 6, 5))
    assert block.depthwise_conv.conv.groups == 4 and block.depthwise_conv.conv.kernel_size == (5, 5)
    # depthwise 4*25, BN 2*4, pointwise 4*6, BN 2*6
    assert sum(p.numel() for p in block.parameters()) == 100 + 8 + 24 + 12
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(block(x), _conv_bn_act(_conv_bn_act(x, block.depthwise_conv), block.pointwise_conv))


def test_cspnext_block_residual_only_when_asked_and_shapes_match():
    x = torch.randn(1, 4, 6, 6)
    for add_identity, expect_identity in ((True, True), (False, False)):
        block = CSPNeXtBlock(4, 4, add_identity).eval()
        block.conv2.pointwise_conv.bn.weight.data.zero_()  # conv2 now outputs SiLU(0) = 0 everywhere
        block.conv2.pointwise_conv.bn.bias.data.zero_()
        torch.testing.assert_close(block(x), x if expect_identity else torch.zeros_like(x))
    assert not CSPNeXtBlock(4, 8, add_identity=True).add_identity  # no residual across a width change
    block = CSPNeXtBlock(4, 4)
    assert block.conv1.conv.kernel_size == (3, 3) and block.conv2.depthwise_conv.conv.kernel_size == (5, 5)


def test_channel_attention_hand_values():
    att = ChannelAttention(2)
    with torch.no_grad():
        att.fc.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        att.fc.bias.copy_(torch.tensor([0.0, 6.0]))
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, -2.0]]]])  # channel means 2 and -1
    gate = torch.tensor([min(max(2 / 6 + 0.5, 0), 1), min(max(5 / 6 + 0.5, 0), 1)])  # hardsigmoid(mean + bias)
    torch.testing.assert_close(att(x), x * gate.view(1, 2, 1, 1))
    assert att.double()(x.double()).dtype == torch.float64


def test_csp_layer_concatenates_main_then_short():
    layer = _randomize_bn(CSPLayer(6, 8, num_blocks=2, add_identity=True, channel_attention=True))
    x = torch.randn(2, 6, 5, 5)
    main = layer.blocks(layer.main_conv(x))
    short = layer.short_conv(x)
    torch.testing.assert_close(layer(x), layer.final_conv(layer.attention(torch.cat([main, short], 1))))
    swapped = layer.final_conv(layer.attention(torch.cat([short, main], 1)))
    assert not torch.allclose(layer(x), swapped)
    assert len(layer.blocks) == 2 and layer.main_conv.conv.out_channels == 4
    assert CSPLayer(6, 8, 1, channel_attention=False).attention is None


def test_spp_equals_chained_5x5_pools():
    spp = _randomize_bn(SPPBottleneck(8, 6))
    x = torch.randn(1, 8, 15, 11)
    y = spp.conv1(x)
    p5 = F.max_pool2d(y, 5, 1, 2)
    p9 = F.max_pool2d(p5, 5, 1, 2)
    p13 = F.max_pool2d(p9, 5, 1, 2)
    torch.testing.assert_close(spp(x), spp.conv2(torch.cat([y, p5, p9, p13], 1)))
    assert spp.conv1.conv.out_channels == 4 and spp.conv2.conv.in_channels == 16


def test_backbone_neck_init():
    layer = CSPLayer(64, 64, 1, channel_attention=True)
    for m in layer.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.fill_(3.0)
    init_backbone_neck_weights(layer)
    assert torch.all(layer.attention.fc.bias == 0)
    w = layer.final_conv.conv.weight
    bound = 1 / math.sqrt(w[0].numel())  # kaiming uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert w.abs().max() <= bound and abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound
    assert torch.all(layer.final_conv.bn.weight == 1) and torch.all(layer.final_conv.bn.bias == 0)
