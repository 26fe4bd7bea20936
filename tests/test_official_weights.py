"""Official mmdetection state_dict layouts (chapter 03): load, export back, and clear errors.

The layouts (keys and shapes as official checkpoints store them, no weights) are in tests/data/mmdet-state-dicts.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from rtmdet_lesson.official_weights import export_mmdet_state_dict, load_mmdet_checkpoint
from rtmdet_lesson.presets import build_model

LAYOUTS = Path(__file__).resolve().parent / "data" / "mmdet-state-dicts"
NAMES = sorted(p.stem for p in LAYOUTS.glob("*.json"))


def test_the_reference_layouts_are_there():
    assert NAMES == ["rtmdet-ins-s", "rtmdet-ins-tiny", "rtmdet-tiny"], f"layouts missing from {LAYOUTS}"


def _canonical(key):
    """Which stored copy a key is: the shared conv of every level is one tensor, and in RTMDet-Ins the reg tower
    is the cls tower (mmdetection's RTMDetInsSepBNHead keys). Written independently of the package."""
    key = re.sub(r"bbox_head\.(cls|reg)_convs\.\d+\.(\d+)\.conv\.weight", r"bbox_head.\1_convs.*.\2.conv.weight", key)
    return key


def _random_reference_state(name):
    shapes = json.loads((LAYOUTS / f"{name}.json").read_text())["shapes"]
    is_ins = "ins" in name
    g = torch.Generator().manual_seed(0)
    canonical_values = {}
    state = {}
    for key, shape in shapes.items():
        canon = _canonical(key)
        if is_ins:
            canon = canon.replace("bbox_head.reg_convs", "bbox_head.cls_convs")
        if canon not in canonical_values:
            if key.endswith("num_batches_tracked"):
                value = torch.randint(0, 1000, shape, generator=g)
            elif key.endswith("running_var"):
                value = torch.rand(shape, generator=g) + 0.5
            else:
                value = torch.randn(shape, generator=g)
            canonical_values[canon] = value
        state[key] = canonical_values[canon].clone()
    return shapes, state


@pytest.mark.parametrize("name", NAMES)
def test_load_then_export_round_trip(name):
    shapes, state = _random_reference_state(name)
    model = build_model(name)
    load_mmdet_checkpoint(model, state)
    exported = export_mmdet_state_dict(model)
    assert set(exported) == set(shapes)
    for key, value in state.items():
        assert list(exported[key].shape) == shapes[key]
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)
    # the loaded values really sit in the modules
    torch.testing.assert_close(model.head.cls_tower.convs[1].weight, state["bbox_head.cls_convs.2.1.conv.weight"])
    torch.testing.assert_close(
        model.head.cls_tower.norms[2][0].running_var, state["bbox_head.cls_convs.2.0.bn.running_var"]
    )


def test_official_count_matches_layout():
    for name in NAMES:
        about = json.loads((LAYOUTS / f"{name}.json").read_text())
        with torch.device("meta"):
            model = build_model(name)
        assert sum(p.numel() for p in model.parameters()) == about["num_params_unique"]


@pytest.fixture(scope="module")
def tiny():
    _, state = _random_reference_state("rtmdet-ins-tiny")
    return build_model("rtmdet-ins-tiny"), state


def test_wrong_shape_is_named(tiny):
    model, state = tiny
    bad = dict(state, **{"bbox_head.rtm_cls.1.weight": torch.zeros(5, 96, 1, 1)})
    with pytest.raises(
        ValueError, match=r"num_classes(.|\n)*shape mismatch: bbox_head\.rtm_cls\.1\.weight is \(5, 96, 1, 1\)"
    ):
        load_mmdet_checkpoint(model, bad)


def test_missing_and_unexpected_keys_are_named(tiny):
    model, state = tiny
    bad = {k: v for k, v in state.items() if k != "neck.out_convs.2.bn.weight"}
    bad["bbox_head.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"missing: neck\.out_convs\.2\.bn\.weight \(96,\)") as info:
        load_mmdet_checkpoint(model, bad)
    assert "unexpected: bbox_head.extra.weight (3,)" in str(info.value)


def test_differing_copies_of_a_shared_conv_are_refused(tiny):
    model, state = tiny
    bad = dict(state)
    bad["bbox_head.reg_convs.1.0.conv.weight"] = bad["bbox_head.reg_convs.1.0.conv.weight"] + 1
    with pytest.raises(ValueError, match=r"differ: bbox_head\.reg_convs\.1\.0\.conv\.weight"):
        load_mmdet_checkpoint(model, bad)


def test_pth_files_ema_and_preprocessor_keys(tmp_path, tiny):
    model, state = tiny
    wrapped = {
        "meta": {"epoch": 300},
        "state_dict": {
            **{f"module.{k}": v for k, v in state.items()},
            "data_preprocessor.mean": torch.zeros(3, 1, 1),
            "ema_backbone_stem_0_conv_weight": torch.zeros(12, 3, 3, 3),
        },
    }
    torch.save(wrapped, tmp_path / "wrapped.pth")
    torch.save(state, tmp_path / "bare.pth")
    for file in ("wrapped.pth", "bare.pth"):
        fresh = build_model("rtmdet-ins-tiny")
        load_mmdet_checkpoint(fresh, tmp_path / file)
        torch.testing.assert_close(fresh.backbone.stem[0].conv.weight, state["backbone.stem.0.conv.weight"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_mmdet_checkpoint(model, tmp_path / "missing.pth")


def test_official_ins_weights_into_the_fixed_head(tiny):
    _, state = tiny
    fixed = build_model("rtmdet-ins-tiny", separate_reg_tower=True)
    load_mmdet_checkpoint(fixed, state)  # the reg tower starts as a copy of the cls tower
    torch.testing.assert_close(fixed.head.reg_tower.convs[0].weight, fixed.head.cls_tower.convs[0].weight)
    assert fixed.head.reg_tower.convs[0].weight is not fixed.head.cls_tower.convs[0].weight


def test_wrong_preset_is_explained(tiny):
    _, state = tiny
    with pytest.raises(ValueError, match="problems.*build the preset matching"):
        load_mmdet_checkpoint(build_model("rtmdet-tiny"), state)
