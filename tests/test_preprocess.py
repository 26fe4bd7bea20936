import pytest
import torch

from rtmdet_lesson.preprocess import MEAN_BGR, STD_BGR, letterbox_geometry, letterbox_image, normalize


def test_letterbox_geometry_keeps_the_ratio_and_records_both_scales():
    box = letterbox_geometry((240, 320), (320, 320))  # landscape: width is the limiting side
    assert (box.scale_x, box.scale_y) == (1.0, 1.0)
    box = letterbox_geometry((100, 400), (320, 320))
    assert box.resized_size == (80, 320)
    assert box.scale_x == pytest.approx(0.8) and box.scale_y == pytest.approx(0.8)


def test_boxes_round_trip_through_a_non_uniform_letterbox():
    box = letterbox_geometry((75, 200), (64, 128))  # 75 * 0.64 = 48 rows, 200 * 0.64 = 128 cols
    assert box.resized_size == (48, 128)
    original = torch.tensor([[10.0, 5.0, 150.0, 70.0]])
    canvas = original * torch.tensor([box.scale_x, box.scale_y, box.scale_x, box.scale_y])
    torch.testing.assert_close(box.boxes_to_original(canvas), original)


def test_boxes_to_original_clamps_to_the_image():
    box = letterbox_geometry((100, 50), (128, 128))
    out = box.boxes_to_original(torch.tensor([[-5.0, -5.0, 127.0, 200.0]]))
    assert out.tolist() == [[0.0, 0.0, 50.0, 100.0]]


def test_letterbox_image_pads_bottom_right_with_grey():
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    canvas, box = letterbox_image(image, (64, 64))
    assert canvas.shape == (3, 64, 64) and canvas.dtype == torch.uint8
    assert box.resized_size == (32, 64)
    assert canvas[:, :32].max() == 0 and (canvas[:, 32:] == 114).all()


def test_letterbox_rejects_empty_and_channels_last_images():
    with pytest.raises(ValueError, match="empty"):
        letterbox_geometry((0, 10), (32, 32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        letterbox_image(torch.zeros(20, 40, 3, dtype=torch.uint8), (64, 64))


def test_normalize_flips_to_bgr_and_uses_the_reference_statistics():
    rgb = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    out = normalize(rgb).flatten()
    expected = [(30 - MEAN_BGR[0]) / STD_BGR[0], (20 - MEAN_BGR[1]) / STD_BGR[1], (10 - MEAN_BGR[2]) / STD_BGR[2]]
    torch.testing.assert_close(out, torch.tensor(expected))
    assert normalize(torch.zeros(2, 3, 4, 4, dtype=torch.uint8)).dtype == torch.float32
    assert normalize(torch.zeros(1, 3, 2, 2, dtype=torch.float64)).dtype == torch.float64


def test_normalize_works_on_its_own_copy():
    images = torch.rand(2, 3, 4, 5) * 255
    before = images.clone()
    out = normalize(images)
    assert torch.equal(images, before)  # the caller's batch is untouched
    expected = (before.flip(1) - torch.tensor(MEAN_BGR).view(1, 3, 1, 1)) / torch.tensor(STD_BGR).view(1, 3, 1, 1)
    assert torch.equal(out, expected)
