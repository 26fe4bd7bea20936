"""The SepBN heads and the mask-feature module (chapter 03)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rtmdet_lesson.head import MaskFeatModule, RTMDetInsSepBNHead, RTMDetSepBNHead

# width o: (det head parameters, Ins head parameters) counted by building mmdetection's configs
SIZES = {96: (358_524, 1_100_543), 128: (625_404, 1_921_791), 192: (1_380_348, 4_246_271),
         256: (2_430_204, 7_480_063), 320: (3_774_972, 11_623_167)}  # fmt: skip


def _count(module):
    return sum(p.numel() for p in module.parameters())


def _feats(channels=16, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, s, s + 2, generator=g) for s in (8, 4, 2)]


@pytest.mark.parametrize("width", SIZES)
def test_parameter_counts(width):
    with torch.device("meta"):
        det, ins = RTMDetSepBNHead(80, width), RTMDetInsSepBNHead(80, width)
    assert (_count(det), _count(ins)) == SIZES[width]


def test_ins_l_breakdown():
    with torch.device("meta"):
        head = RTMDetInsSepBNHead(80, 256)
    assert _count(head.cls_tower) == 1_182_720
    assert _count(head.kernel_convs) == 3_542_016
    assert _count(head.rtm_cls) + _count(head.rtm_reg) + _count(head.rtm_kernel) == 195_063
    assert _count(head.mask_head) == 2_560_264


def test_tower_convs_are_shared_and_bn_is_per_level():
    head = RTMDetSepBNHead(5, 16)
    calls = []
    head.cls_tower.convs[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[-2:]))
    head(_feats())
    assert len(calls) == 3  # one conv object runs on all three levels
    norms = head.cls_tower.norms
    assert len(norms) == 3 and norms[0][0] is not norms[1][0]
    assert _count(head.cls_tower) == 2 * 16 * 16 * 9 + 3 * 2 * 2 * 16  # 2 convs once, 6 BNs


def test_initialisation():
    torch.manual_seed(0)
    det, ins = RTMDetSepBNHead(80, 64), RTMDetInsSepBNHead(80, 64)
    for head, reg_bias in ((det, 0.0), (ins, 1.0)):
        for level in range(3):
            torch.testing.assert_close(head.rtm_cls[level].bias, torch.full((80,), -math.log(99)))
            torch.testing.assert_close(head.rtm_reg[level].bias, torch.full((4,), reg_bias))
        assert abs(head.cls_tower.convs[0].weight.std().item() - 0.01) < 1e-3
    assert torch.all(ins.rtm_kernel[0].bias == 0) and abs(ins.rtm_kernel[0].weight.std().item() - 0.01) < 1e-3
    assert torch.all(ins.mask_head.fusion_conv.bias == 0) and torch.all(ins.mask_head.projection.bias == 0)
    assert abs(ins.mask_head.stacked_convs[0].conv.weight.std().item() - 0.01) < 1e-3


def _predictor_inputs(head, feats):
    seen = {"cls": [], "reg": []}
    for level in range(3):
        head.rtm_cls[level].register_forward_hook(lambda m, i, o: seen["cls"].append(i[0]))
        head.rtm_reg[level].register_forward_hook(lambda m, i, o: seen["reg"].append(i[0]))
    out = head(feats)
    return out, seen


def test_ins_default_reuses_cls_tower_for_boxes():
    head = RTMDetInsSepBNHead(5, 16)
    assert head.reg_tower is None
    out, seen = _predictor_inputs(head.eval(), _feats())
    for cls_feat, reg_feat in zip(seen["cls"], seen["reg"], strict=True):
        torch.testing.assert_close(reg_feat, cls_feat)
    # in training, the second pass updates the cls tower's BN statistics twice per step
    head.train()(_feats())
    assert head.cls_tower.norms[0][0].num_batches_tracked.item() == 2


def test_ins_separate_reg_tower_is_a_real_tower():
    head = RTMDetInsSepBNHead(5, 16, separate_reg_tower=True)
    _, seen = _predictor_inputs(head.eval(), _feats())
    assert not torch.allclose(seen["reg"][0], seen["cls"][0])
    head.train()(_feats())
    assert head.cls_tower.norms[0][0].num_batches_tracked.item() == 1


def test_box_outputs_per_head_kind():
    feats = _feats()
    strides = (8, 16, 32)
    for exp_on_reg in (False, True):
        head = RTMDetSepBNHead(5, 16, exp_on_reg=exp_on_reg).eval()
        raw = []
        for level in range(3):
            head.rtm_reg[level].register_forward_hook(lambda m, i, o, raw=raw: raw.append(o))
        out = head(feats)
        for r, box, s in zip(raw, out.bbox_preds, strides, strict=True):
            torch.testing.assert_close(box, (r.exp() if exp_on_reg else r) * s)
        assert out.kernel_preds is None and out.mask_feats is None
    ins = RTMDetInsSepBNHead(5, 16).eval()
    out = ins(feats)
    for box, s in zip(out.bbox_preds, strides, strict=True):  # ReLU(~1) * stride at initialisation
        assert box.min() >= 0 and torch.allclose(box, torch.full_like(box, float(s)), rtol=0.1)


def test_ins_output_shapes():
    out = RTMDetInsSepBNHead(5, 16).eval()(_feats())
    assert [tuple(t.shape) for t in out.cls_scores] == [(2, 5, 8, 10), (2, 5, 4, 6), (2, 5, 2, 4)]
    assert [tuple(t.shape) for t in out.bbox_preds] == [(2, 4, 8, 10), (2, 4, 4, 6), (2, 4, 2, 4)]
    assert [tuple(t.shape) for t in out.kernel_preds] == [(2, 169, 8, 10), (2, 169, 4, 6), (2, 169, 2, 4)]
    assert out.mask_feats.shape == (2, 8, 8, 10)


def test_mask_feat_module_concatenates_p3_p4_p5():
    torch.manual_seed(0)
    module = MaskFeatModule(16, 12).eval()
    p3, p4, p5 = _feats()
    resize = lambda f: F.interpolate(f, size=p3.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
    expected = module.projection(module.stacked_convs(module.fusion_conv(torch.cat([p3, resize(p4), resize(p5)], 1))))
    torch.testing.assert_close(module([p3, p4, p5]), expected)
    assert module.fusion_conv.bias is not None and module.projection.out_channels == 8
    assert len(module.stacked_convs) == 4
