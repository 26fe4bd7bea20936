"""Presets (chapter 03): published parameter counts and FLOPs of all ten official models, the course presets,
and the summary table."""

import pytest
import torch

from rtmdet_lesson.cli import main as cli
from rtmdet_lesson.presets import PRESETS, build_model
from rtmdet_lesson.summary import count_parameters, summarize

# name: (backbone, neck, head, total parameters; conv GMACs at 640) counted by building mmdetection's configs/rtmdet
OFFICIAL = {
    "rtmdet-tiny": (2_348_700, 2_188_944, 358_524, 4_896_168, 8.04),
    "rtmdet-s": (4_378_320, 3_883_200, 625_404, 8_886_924, 14.76),
    "rtmdet-m": (12_279_432, 11_049_408, 1_380_348, 24_709_188, 39.07),
    "rtmdet-l": (26_138_912, 23_746_688, 2_430_204, 52_315_804, 79.90),
    "rtmdet-x": (47_569_560, 43_511_040, 3_774_972, 94_855_572, 141.19),
    "rtmdet-ins-tiny": (2_348_700, 2_188_944, 1_100_543, 5_638_187, 11.87),
    "rtmdet-ins-s": (4_378_320, 3_883_200, 1_921_791, 10_183_311, 21.52),
    "rtmdet-ins-m": (12_279_432, 11_049_408, 4_246_271, 27_575_111, 54.12),
    "rtmdet-ins-l": (26_138_912, 23_746_688, 7_480_063, 57_365_663, 106.54),
    "rtmdet-ins-x": (47_569_560, 43_511_040, 11_623_167, 102_703_767, 182.70),
}
# Ins totals with a real reg tower, in millions (from building mmdetection's configs)
SEPARATE_REG_M = {"tiny": 5.805, "s": 10.480, "m": 28.241, "l": 58.548, "x": 104.551}


def _meta(name, **kw):
    with torch.device("meta"):
        return build_model(name, **kw)


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_parameters_and_flops(name):
    backbone, neck, head, total, gmacs = OFFICIAL[name]
    model = _meta(name)
    assert model.num_classes == 80
    assert (count_parameters(model.backbone), count_parameters(model.neck), count_parameters(model.head)) == (
        backbone,
        neck,
        head,
    )
    assert count_parameters(model) == total
    rows = summarize(model)
    assert rows[-1][0] == "total" and rows[-1][1] == total
    assert round(rows[-1][2] / 1e9, 2) == gmacs
    assert sum(r[1] for r in rows[:-1]) == total and sum(r[2] for r in rows[:-1]) == rows[-1][2]


@pytest.mark.parametrize("size", SEPARATE_REG_M)
def test_separate_reg_tower_counts(size):
    model = _meta(f"rtmdet-ins-{size}", separate_reg_tower=True)
    assert round(count_parameters(model) / 1e6, 3) == SEPARATE_REG_M[size]


def test_exp_on_reg_only_for_large_detectors():
    assert [PRESETS[f"rtmdet-{s}"]["exp_on_reg"] for s in ("tiny", "s", "m", "l", "x")] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert _meta("rtmdet-m").head.exp_on_reg and not _meta("rtmdet-s").head.exp_on_reg


def test_course_presets_and_overrides():
    assert len(PRESETS) == 12
    course = _meta("course-sprites")
    assert course.num_classes == 5 and course.with_mask and course.head.reg_tower is None
    assert course.settings["widen_factor"] == 0.25 and course.settings["deepen_factor"] == 0.167
    wider = _meta("course-sprites", num_classes=3, widen_factor=0.5, separate_reg_tower=True)
    assert wider.head.rtm_cls[0].out_channels == 3 and wider.backbone.out_channels == (128, 256, 512)
    assert wider.head.reg_tower is not None and wider.preset == "course-sprites"


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="rtmdet-ins-tiny.*course-sprites"):
        build_model("rtmdet-huge")


def test_summary_main_prints_a_table(capsys):
    assert cli(["summary", "course-sprites", "--num-classes", "7"]) == 0
    out = capsys.readouterr().out
    assert "7 classes" in out and "head: mask features" in out and "total" in out


def test_summary_main_rejects_unknown_preset(capsys):
    assert cli(["summary", "rtmdet-huge"]) == 2
    assert "valid names" in capsys.readouterr().err
