"""RTMDet as a whole (chapter 03): output shapes, input checks, dtype, delegation to loss and predict."""

import sys
import types

import pytest
import torch

from rtmdet_lesson.model import HeadOutput, RTMDet
from rtmdet_lesson.presets import build_model


@pytest.fixture(scope="module")
def course_model():
    torch.manual_seed(0)
    return build_model("course-sprites").eval()


def test_attributes(course_model):
    m = course_model
    assert m.num_classes == 5 and m.strides == (8, 16, 32) and m.with_mask and m.preset == "course-sprites"
    assert m.class_names is None
    named = build_model("course-sprites-det", class_names=["a", "b", "c", "d", "e"])
    assert named.class_names == ["a", "b", "c", "d", "e"] and not named.with_mask
    with pytest.raises(ValueError, match="one per class"):
        build_model("course-sprites", class_names=["a"])


def test_output_shapes_640():
    with torch.device("meta"):  # shapes only: the meta device skips the arithmetic
        model = build_model("rtmdet-ins-tiny").eval()
        out = model(torch.zeros(1, 3, 640, 640))
    assert isinstance(out, HeadOutput)
    sizes = [(80, 80), (40, 40), (20, 20)]  # 8400 priors
    assert [tuple(t.shape) for t in out.cls_scores] == [(1, 80, *s) for s in sizes]
    assert [tuple(t.shape) for t in out.bbox_preds] == [(1, 4, *s) for s in sizes]
    assert [tuple(t.shape) for t in out.kernel_preds] == [(1, 169, *s) for s in sizes]
    assert out.mask_feats.shape == (1, 8, 80, 80)


def test_output_shapes_non_square(course_model):
    with torch.no_grad():
        out = course_model(torch.randn(2, 3, 320, 192))
    sizes = [(40, 24), (20, 12), (10, 6)]
    assert [tuple(t.shape) for t in out.cls_scores] == [(2, 5, *s) for s in sizes]
    assert [tuple(t.shape) for t in out.bbox_preds] == [(2, 4, *s) for s in sizes]
    assert [tuple(t.shape) for t in out.kernel_preds] == [(2, 169, *s) for s in sizes]
    assert out.mask_feats.shape == (2, 8, 40, 24)


def test_detector_has_no_mask_outputs():
    model = build_model("course-sprites-det").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.kernel_preds is None and out.mask_feats is None
    assert [tuple(t.shape) for t in out.bbox_preds] == [(1, 4, 8, 12), (1, 4, 4, 6), (1, 4, 2, 3)]


def test_size_not_multiple_of_32_is_explained(course_model):
    with pytest.raises(ValueError, match=r"100x64 .*multiple of 32.*letterbox_image.*128x64"):
        course_model(torch.randn(1, 3, 100, 64))


def test_wrong_shapes_and_dtypes_are_explained(course_model):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*x\[None\]"):
        course_model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="normalize"):
        course_model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_float64_in_float64_out():
    torch.manual_seed(0)
    model = build_model("course-sprites").double().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    tensors = out.cls_scores + out.bbox_preds + out.kernel_preds + [out.mask_feats]
    assert all(t.dtype == torch.float64 for t in tensors)


def test_batch_of_one_matches_batch(course_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        both, first = course_model(x), course_model(x[:1])
    torch.testing.assert_close(both.cls_scores[0][:1], first.cls_scores[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both.mask_feats[:1], first.mask_feats, rtol=1e-4, atol=1e-4)


def test_loss_and_predict_delegate(monkeypatch, course_model):
    calls = {}

    def compute_losses(outputs, targets, image_size):
        calls["loss"] = (type(outputs), targets, image_size)
        return {"loss_cls": torch.zeros(())}

    def predict(model, images, **kw):
        calls["predict"] = (model, images, kw)
        return ["instances"]

    monkeypatch.setitem(sys.modules, "rtmdet_lesson.criterion", types.SimpleNamespace(compute_losses=compute_losses))
    monkeypatch.setitem(sys.modules, "rtmdet_lesson.predict", types.SimpleNamespace(predict=predict))
    targets = [{"boxes": torch.zeros(0, 4)}]
    assert "loss_cls" in course_model.loss(torch.randn(1, 3, 64, 96), targets)
    assert calls["loss"] == (HeadOutput, targets, (64, 96))
    assert course_model.predict("img", config="deploy") == ["instances"]
    assert calls["predict"] == (course_model, "img", {"config": "deploy"})


def test_settings_rebuild_the_same_architecture(course_model):
    twin = RTMDet(**course_model.settings)
    assert twin.state_dict().keys() == course_model.state_dict().keys()
