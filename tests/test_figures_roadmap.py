"""The roadmap figure: shapes from a real forward pass, and the right boxes lit for each chapter."""

import matplotlib
import matplotlib.pyplot as plt
import pytest

from rtmdet_lesson import build_model
from rtmdet_lesson.figures.roadmap import CHAPTER_TITLES, network_shapes, roadmap_figure

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_network_shapes_are_the_published_tiny_widths():
    shapes = network_shapes(build_model("rtmdet-ins-tiny", num_classes=80))
    assert shapes["backbone"] == [(96, 8), (192, 16), (384, 32)]  # 256, 512, 1024 x widen 0.375
    assert shapes["neck"] == [(96, 8), (96, 16), (96, 32)]
    assert shapes["cls"] == [(80, 8), (80, 16), (80, 32)]
    assert shapes["kernel"][0] == (169, 8)  # 88 + 72 + 9 dynamic parameters
    assert shapes["mask_feats"] == [(8, 8)]


def test_a_detector_has_no_mask_shapes():
    assert "kernel" not in network_shapes(build_model("rtmdet-tiny", num_classes=3))


def _lit(fig) -> set[str]:
    ax = fig.axes[0]
    return {text.get_text().split(" (")[0] for text in ax.texts if text.get_fontweight() == "bold"
            and text.get_color() == "black"}


def test_each_chapter_lights_its_own_piece():
    model = build_model("rtmdet-ins-tiny", num_classes=80)
    assert _lit(roadmap_figure(1, model)) == {"backbone"}
    assert _lit(roadmap_figure(5, model)) == {"assignment"}
    assert _lit(roadmap_figure(8, model)) == {"decoding", "instances"}
    assert len(_lit(roadmap_figure(None, model))) == 10
    texts = " ".join(t.get_text() for t in roadmap_figure(3, model).axes[0].texts)
    assert "(192, H/16, W/16)" in texts and "kernels (169, H/s, W/s)" in texts


def test_every_chapter_has_a_title_and_an_unknown_one_is_refused():
    assert sorted(CHAPTER_TITLES) == list(range(11))
    with pytest.raises(ValueError, match="no chapter 11"):
        roadmap_figure(11)
