"""RTMDet-R post-processing and predict (rtmdet_lesson.rotated.postprocess / predict)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from rtmdet_lesson import build_model
from rtmdet_lesson.preprocess import Letterbox, letterbox_geometry
from rtmdet_lesson.rotated import rotated_iou
from rtmdet_lesson.rotated.head import RotatedHeadOutput
from rtmdet_lesson.rotated.postprocess import ROTATED_EVAL, rboxes_to_original, rotated_postprocess


def test_reference_test_settings():
    assert (ROTATED_EVAL.nms_pre, ROTATED_EVAL.score_thr, ROTATED_EVAL.iou_threshold, ROTATED_EVAL.max_per_img) == (
        2000, 0.05, 0.1, 2000)


def test_rboxes_to_original_by_hand():
    box = Letterbox(scale_x=0.5, scale_y=0.5, pad_left=4, pad_top=8, original_size=(100, 200), canvas_size=(64, 128))
    out = rboxes_to_original(torch.tensor([[14.0, 18.0, 10.0, 4.0, 0.3]]), box)
    torch.testing.assert_close(out, torch.tensor([[20.0, 20.0, 20.0, 8.0, 0.3]]))
    # unequal scales: a box along the diagonal, x stretched by 2 and y by 1, turns towards x
    stretch = Letterbox(scale_x=0.5, scale_y=1.0, pad_left=0, pad_top=0, original_size=(10, 10), canvas_size=(32, 32))
    out = rboxes_to_original(torch.tensor([[0.0, 0.0, math.sqrt(2), 0.0, math.pi / 4]]), stretch)
    torch.testing.assert_close(out[0, 2:], torch.tensor([math.sqrt(5), 0.0, math.atan2(1, 2)]))


def _fake_outputs(canvas=64, num_classes=2):
    """One image; level 0 (stride 8) has three confident priors, the rest is background."""
    sizes = [(canvas // s, canvas // s) for s in (8, 16, 32)]
    cls = [torch.full((1, num_classes, h, w), -10.0) for h, w in sizes]
    dist = [torch.full((1, 4, h, w), 2.0) for h, w in sizes]
    ang = [torch.zeros(1, 1, h, w) for h, w in sizes]
    # prior (x=16, y=24): class 0, score sigmoid(3); box left 4, top 2, right 12, bottom 6 at angle 0.5
    cls[0][0, 0, 3, 2] = 3.0
    dist[0][0, :, 3, 2] = torch.tensor([4.0, 2.0, 12.0, 6.0])
    ang[0][0, 0, 3, 2] = 0.5
    # the next prior (x=24, y=24), same class, lower score, nearly the same box: NMS drops it
    cls[0][0, 0, 3, 3] = 2.0
    dist[0][0, :, 3, 3] = torch.tensor([12.0, 2.0, 4.0, 6.0])
    ang[0][0, 0, 3, 3] = 0.5
    # the same box from the same prior as class 1: another class, kept
    cls[0][0, 1, 3, 2] = 1.0
    return RotatedHeadOutput(cls, dist, angle_preds=ang)


def test_postprocess_decodes_suppresses_and_keeps_other_classes():
    canvas = 64
    box = letterbox_geometry((canvas, canvas), (canvas, canvas))  # identity letterbox
    result = rotated_postprocess(_fake_outputs(canvas), [box])[0]
    assert result.labels.tolist() == [0, 1]
    torch.testing.assert_close(result.scores, torch.tensor([3.0, 1.0]).sigmoid())
    # centre = (16, 24) + R(0.5) ((12 - 4) / 2, (6 - 2) / 2); w = 16, h = 8
    c, s = math.cos(0.5), math.sin(0.5)
    expected = torch.tensor([16 + 4 * c - 2 * s, 24 + 4 * s + 2 * c, 16.0, 8.0, 0.5])
    torch.testing.assert_close(result.rboxes[0], expected)
    assert rotated_iou(result.rboxes[:1], result.rboxes[1:]).item() > 0.99


def test_postprocess_maps_to_the_original_image():
    original = (32, 128)  # H, W: a wide image, scaled by 0.5 onto a 64 x 64 canvas
    box = letterbox_geometry(original, (64, 64))
    result = rotated_postprocess(_fake_outputs(64), [box])[0]
    canvas_box = rotated_postprocess(_fake_outputs(64), [letterbox_geometry((64, 64), (64, 64))])[0].rboxes
    torch.testing.assert_close(result.rboxes[:, :4], canvas_box[:, :4] * 2)
    torch.testing.assert_close(result.rboxes[:, 4], canvas_box[:, 4])


def test_postprocess_with_nothing_above_the_threshold():
    out = _fake_outputs(64)
    for c in out.cls_scores:
        c.fill_(-10.0)
    result = rotated_postprocess(out, [letterbox_geometry((64, 64), (64, 64))])[0]
    assert result.rboxes.shape == (0, 5) and len(result) == 0


class _FixedOutputs(nn.Module):
    """Stands in for a trained model: ignores the image and returns ``_fake_outputs``."""

    strides = (8, 16, 32)
    input_size = 64

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        assert x.shape == (1, 3, 64, 64)
        return _fake_outputs(64)


def test_predict_undoes_the_letterbox():
    from rtmdet_lesson.rotated.predict import predict_rotated

    image = np.zeros((32, 128, 3), dtype=np.uint8)  # H 32, W 128 -> scale 0.5 onto 64 x 64
    result = predict_rotated(_FixedOutputs(), image)
    assert len(result) == 1
    c, s = math.cos(0.5), math.sin(0.5)
    expected = torch.tensor([2 * (16 + 4 * c - 2 * s), 2 * (24 + 4 * s + 2 * c), 32.0, 16.0, 0.5])
    torch.testing.assert_close(result[0].rboxes[0], expected)


def test_model_predict_runs_on_raw_images():
    torch.manual_seed(0)
    model = build_model("rtmdet-r-tiny", num_classes=3, widen_factor=0.125, input_size=64)
    images = [np.full((50, 70, 3), 128, dtype=np.uint8), np.zeros((64, 32, 3), dtype=np.uint8)]
    results = model.predict(images, score_thr=0.0)
    assert len(results) == 2 and model.training  # put back in training mode
    for r in results:
        assert r.rboxes.shape[1] == 5 and len(r.scores) == len(r.labels) == len(r) > 0
        assert (r.rboxes[:, 2] >= r.rboxes[:, 3]).all()  # le90: w the longer side
        assert (r.rboxes[:, 4] >= -math.pi / 2).all() and (r.rboxes[:, 4] < math.pi / 2).all()
        assert (r.scores.diff() <= 0).all()


def test_outputs_without_angles_are_named():
    out = _fake_outputs(64)
    out.angle_preds = None
    with pytest.raises(ValueError, match="angle_preds"):
        rotated_postprocess(out, [letterbox_geometry((64, 64), (64, 64))])
