"""predict: accepted inputs, clear errors for wrong ones, shapes in original pixels, COCO results."""

import numpy as np
import pytest
import torch
from PIL import Image

from rtmdet_lesson.postprocess import InferenceConfig
from rtmdet_lesson.predict import Instances, default_canvas_size, predict, to_rgb_tensor
from rtmdet_lesson.presets import build_model

CANVAS = 64
LOW = InferenceConfig(score_thr=0.0, max_per_img=5)  # a random model scores ~0.01: keep everything


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("course-sprites").eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)  # non-square


def test_the_same_image_in_every_accepted_form_gives_the_same_instances(model, image, tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    forms = [image, Image.fromarray(image), torch.from_numpy(image), torch.from_numpy(image).permute(2, 0, 1),
             str(path), path, Image.fromarray(image).convert("RGBA")]  # PIL images are converted to RGB
    results = predict(model, forms, config=LOW, canvas_size=CANVAS)
    assert len(results) == len(forms)
    for found in results:
        assert isinstance(found, Instances) and len(found) == 5
        torch.testing.assert_close(found.boxes, results[0].boxes)
        assert torch.equal(found.masks, results[0].masks)


def test_shapes_are_in_original_pixels(model, image):
    (found,) = predict(model, image, config=LOW, canvas_size=CANVAS)  # one image -> a list of one
    assert found.boxes.shape == (5, 4) and found.scores.shape == (5,) and found.labels.dtype == torch.int64
    assert found.masks.shape == (5, 45, 70) and found.masks.dtype == torch.bool
    assert (found.boxes[:, [0, 2]] <= 70).all() and (found.boxes[:, [1, 3]] <= 45).all() and (found.boxes >= 0).all()
    assert found.letterbox.original_size == (45, 70) and found.letterbox.canvas_size == (CANVAS, CANVAS)
    assert (found.scores[:-1] >= found.scores[1:]).all()


def test_batching_does_not_change_results(model, image):
    other = np.ascontiguousarray(image[::-1, :40])
    together = predict(model, [image, other], config=LOW, canvas_size=CANVAS, batch_size=2)
    alone = predict(model, [image, other], config=LOW, canvas_size=CANVAS, batch_size=1)
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)


def test_training_mode_is_restored_and_model_predict_delegates(model, image):
    model.train()
    via_method = model.predict(image, config=LOW, canvas_size=CANVAS)
    assert model.training
    model.eval()
    direct = predict(model, image, config=LOW, canvas_size=CANVAS)
    torch.testing.assert_close(via_method[0].boxes, direct[0].boxes)


def test_default_canvas_is_the_models_input_size():
    with torch.device("meta"):  # shapes only: building is instant
        assert default_canvas_size(build_model("course-sprites")) == (320, 320)
        assert default_canvas_size(build_model("rtmdet-ins-tiny")) == (640, 640)
        assert default_canvas_size(build_model("course-sprites", input_size=416)) == (416, 416)

    class Bare:  # any object without an input_size gets the official test size
        pass

    assert default_canvas_size(Bare()) == (640, 640)


def test_to_coco(model, image):
    (found,) = predict(model, image, config=LOW, canvas_size=CANVAS)
    results = found.to_coco(42, {k: 10 + k for k in range(5)})
    assert len(results) == 5
    first = results[0]
    assert first["image_id"] == 42 and first["category_id"] == 10 + int(found.labels[0])
    x1, y1, x2, y2 = found.boxes[0].tolist()
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert first["segmentation"]["size"] == [45, 70] and isinstance(first["segmentation"]["counts"], str)
    with pytest.raises(ValueError, match="category id"):
        found.to_coco(1, {0: 1})


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((20, 30, 3), np.float32), "uint8"),
        (torch.zeros(3, 20, 30), "uint8"),
        (np.zeros((20, 30), np.uint8), "grayscale"),
        (np.zeros((20, 30, 1), np.uint8), "grayscale"),
        (torch.zeros(1, 20, 30, dtype=torch.uint8), "grayscale"),
        (np.zeros((3, 20, 30), np.uint8), "channels-first"),
        (np.zeros((20, 30, 4), np.uint8), "alpha"),
        (torch.zeros(20, 30, 4, dtype=torch.uint8), "alpha"),
        (np.zeros((0, 30, 3), np.uint8), "empty"),
        (torch.zeros(3, 20, 0, dtype=torch.uint8), "empty"),
        ([], "empty list"),
        ("no/such/file.png", "does not exist"),
        (12, "cannot read"),
    ],
)
def test_bad_inputs_name_the_problem_and_the_fix(model, bad, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        predict(model, bad, canvas_size=CANVAS)


def test_bad_canvas_and_config(model, image):
    with pytest.raises(ValueError, match="multiple of 32"):
        predict(model, image, canvas_size=100)
    with pytest.raises(ValueError, match="deploy"):
        predict(model, image, config="accurate", canvas_size=CANVAS)


def test_to_rgb_tensor_layouts(image):
    chw = to_rgb_tensor(image)
    assert chw.shape == (3, 45, 70) and chw.dtype == torch.uint8
    assert torch.equal(to_rgb_tensor(torch.from_numpy(image)), chw)
    assert torch.equal(to_rgb_tensor(Image.fromarray(image)), chw)
