"""RTMDet-R network (rtmdet_lesson.rotated.head / model): parameter counts to the parameter, outputs."""

import pytest
import torch

from rtmdet_lesson import build_model
from rtmdet_lesson.presets import ROTATED_PRESETS
from rtmdet_lesson.rotated.head import RotatedHeadOutput
from rtmdet_lesson.rotated.model import RTMDetR

# Built from mmrotate's own configs (configs/rotated_rtmdet/rotated_rtmdet_{tiny,s}-3x-dota.py):
# (backbone, neck, head, total)
EXACT = {
    "rtmdet-r-tiny": (2_348_700, 2_188_944, 339_900, 4_877_544),
    "rtmdet-r-s": (4_378_320, 3_883_200, None, 8_862_156),
}
PUBLISHED_M = {"rtmdet-r-tiny": 4.88, "rtmdet-r-s": 8.86, "rtmdet-r-m": 24.67, "rtmdet-r-l": 52.27}  # README, rounded


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return build_model(name, **kwargs)


@pytest.mark.parametrize("name", list(EXACT))
def test_parameter_counts_to_the_parameter(name):
    model = meta_model(name)
    backbone, neck, head, total = EXACT[name]
    assert count(model) == total
    assert count(model.backbone) == backbone and count(model.neck) == neck
    if head is not None:
        assert count(model.head) == head


@pytest.mark.parametrize("name", list(PUBLISHED_M))
def test_parameter_counts_match_the_published_rounding(name):
    assert round(count(meta_model(name)) / 1e6, 2) == PUBLISHED_M[name]


def test_head_is_the_det_head_plus_one_angle_conv_per_level():
    # 15 classes: the 80-class det-tiny head (358,524) minus 65 classes x 97 x 3 levels, plus 3 x (96 + 1)
    model = meta_model("rtmdet-r-tiny")
    assert count(model.head) == 358_524 - 65 * 97 * 3 + 3 * 97
    assert [tuple(c.weight.shape) for c in model.head.rtm_ang] == [(1, 96, 1, 1)] * 3
    assert model.head.reg_tower is not None  # its own box tower, convs shared across levels
    assert len(model.head.reg_tower.convs) == 2 and len(model.head.reg_tower.norms) == 3  # 2 shared convs, BN per level


def test_presets_settings():
    assert set(ROTATED_PRESETS) == {"rtmdet-r-tiny", "rtmdet-r-s", "rtmdet-r-m", "rtmdet-r-l", "course-sprites-rotated"}
    assert [ROTATED_PRESETS[f"rtmdet-r-{s}"]["exp_on_reg"] for s in ("tiny", "s", "m", "l")] == [
        False, False, True, True]  # as mmrotate's configs: the l config sets it, m inherits, tiny and s unset it
    model = meta_model("rtmdet-r-tiny")
    assert isinstance(model, RTMDetR) and model.num_classes == 15 and model.input_size == 1024
    assert model.preset == "rtmdet-r-tiny"
    assert meta_model("rtmdet-r-s", num_classes=3).head.rtm_cls[0].out_channels == 3
    # the course model: course-sprites' numbers with the rotated head (2,175,750 parameters)
    course = meta_model("course-sprites-rotated")
    assert (course.num_classes, course.input_size, count(course)) == (5, 320, 2_175_750)


def test_forward_outputs_and_initial_angles():
    torch.manual_seed(0)
    model = build_model("rtmdet-r-tiny", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, RotatedHeadOutput)
    sizes = [(8, 12), (4, 6), (2, 3)]
    assert [tuple(t.shape) for t in out.cls_scores] == [(2, 4, h, w) for h, w in sizes]
    assert [tuple(t.shape) for t in out.bbox_preds] == [(2, 4, h, w) for h, w in sizes]
    assert [tuple(t.shape) for t in out.angle_preds] == [(2, 1, h, w) for h, w in sizes]
    assert out.kernel_preds is None and out.mask_feats is None
    # angle conv starts at weight ~N(0, 0.01), bias 0: angles near 0
    assert all(a.abs().max() < 0.5 for a in out.angle_preds)
    assert all((conv.bias == 0).all() for conv in model.head.rtm_ang)


def test_exp_on_reg_distances_are_positive():
    torch.manual_seed(0)
    model = build_model("rtmdet-r-tiny", exp_on_reg=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert all((d > 0).all() for d in out.bbox_preds)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="no mask branch"):
        build_model("rtmdet-r-tiny", with_mask=True)
    with pytest.raises(ValueError, match="rtmdet-r-tiny"):
        build_model("rtmdet-r-x")  # mmrotate publishes no x for DOTA
    with pytest.raises(ValueError, match="multiple of 32"):
        meta_model("rtmdet-r-tiny")(torch.zeros(1, 3, 50, 64, device="meta"))


def _reference_head_keys(levels=3, convs=2):
    """The head's parameter and buffer names in mmrotate's RotatedRTMDetSepBNHead, written from its _init_layers:
    cls_convs / reg_convs [level][i] ConvModules (conv + bn), and per-level rtm_cls, rtm_reg, rtm_ang."""
    keys = set()
    for level in range(levels):
        for tower in ("cls_convs", "reg_convs"):
            for i in range(convs):
                keys.add(f"bbox_head.{tower}.{level}.{i}.conv.weight")
                for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    keys.add(f"bbox_head.{tower}.{level}.{i}.bn.{field}")
        for pred in ("rtm_cls", "rtm_reg", "rtm_ang"):
            keys |= {f"bbox_head.{pred}.{level}.weight", f"bbox_head.{pred}.{level}.bias"}
    return keys


def test_official_layout_round_trip():
    from rtmdet_lesson import export_mmdet_state_dict, load_mmdet_checkpoint

    torch.manual_seed(0)
    model = build_model("rtmdet-r-tiny", widen_factor=0.125).eval()
    exported = export_mmdet_state_dict(model)
    assert {k for k in exported if k.startswith("bbox_head.")} == _reference_head_keys()
    assert tuple(exported["bbox_head.rtm_ang.2.weight"].shape) == (1, 32, 1, 1)
    fresh = build_model("rtmdet-r-tiny", widen_factor=0.125).eval()
    load_mmdet_checkpoint(fresh, exported)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), fresh(x)
    for name in ("cls_scores", "bbox_preds", "angle_preds"):
        for u, v in zip(getattr(a, name), getattr(b, name), strict=True):
            torch.testing.assert_close(u, v)
    # a detector's checkpoint lacks the angle convs: named, not a deep error
    del exported["bbox_head.rtm_ang.0.weight"]
    with pytest.raises(ValueError, match="missing: bbox_head.rtm_ang.0.weight"):
        load_mmdet_checkpoint(fresh, exported)


def test_package_checkpoint_round_trip(tmp_path):
    from rtmdet_lesson.checkpoint import load_checkpoint_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("rtmdet-r-tiny", num_classes=2, widen_factor=0.125, input_size=64).eval()
    path = save_checkpoint(tmp_path / "r.pth", model, class_names=["ship", "plane"])
    back = load_checkpoint_model(path)
    assert isinstance(back, RTMDetR) and back.class_names == ["ship", "plane"] and back.input_size == 64
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x).angle_preds[0], model(x).angle_preds[0])


def test_summary_names_the_rotated_model(capsys):
    from rtmdet_lesson.cli import main as cli

    assert cli(["summary", "rtmdet-r-tiny"]) == 0
    out = capsys.readouterr().out
    assert "15 classes, RTMDet-R" in out and "4,877,544" in out
