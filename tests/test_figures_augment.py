"""Chapter 07's augmentation widget: the preview of training stage 1 under other settings, and its figure."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from rtmdet_lesson.data import transforms as T
from rtmdet_lesson.data.coco import sprites_split
from rtmdet_lesson.figures.augment import augmentation_figure, augmentation_pipeline, augmentation_preview

SIZE = (96, 96)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def train_set(sprites):
    return sprites_split(sprites, "train")


@pytest.fixture(scope="module")
def one_image(train_set):
    """A dataset of one image, so that every cached partner is that image."""
    return [train_set[0]]


def test_preview_samples_keep_the_two_rules(train_set):
    preview = augmentation_preview(train_set, 3, size=SIZE, seed=0)
    assert len(preview.samples) == len(preview.changed_by) == 3
    for image, target in preview.samples:
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, *SIZE)
        assert torch.equal(target["boxes"], T.masks_to_boxes(target["masks"]))
        assert bool(target["masks"].flatten(1).any(1).all())  # no empty mask
    assert len(preview.sizes) == sum(len(t["labels"]) for _, t in preview.samples)
    assert set(preview.changed_by) <= {"mosaic", "mosaic + mixup"}  # the mosaic cache is warm for every sample


def test_the_seed_decides_everything(train_set):
    a = augmentation_preview(train_set, 2, size=SIZE, seed=3)
    b = augmentation_preview(train_set, 2, size=SIZE, seed=3)
    c = augmentation_preview(train_set, 2, size=SIZE, seed=4)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a.samples, b.samples, strict=True))
    assert np.array_equal(a.sizes, b.sizes) and a.changed_by == b.changed_by
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a.samples, c.samples, strict=True))


def test_without_mosaic_mixup_or_jitter_every_object_survives_at_its_letterbox_size(one_image):
    g = len(one_image[0][1]["labels"])
    preview = augmentation_preview(one_image, 3, size=SIZE, mosaic=False, mixup_prob=0.0, ratio_range=(1.0, 1.0))
    assert preview.changed_by == ["neither"] * 3
    assert [len(t["labels"]) for _, t in preview.samples] == [g] * 3
    # The random resize at ratio 1 fits the image into the canvas, as the letterbox does (up to rounding).
    np.testing.assert_allclose(np.sort(preview.sizes), np.sort(preview.source_sizes), atol=1.5)


def test_mixup_with_one_cached_image_mixes_the_image_with_itself(one_image):
    g = len(one_image[0][1]["labels"])
    preview = augmentation_preview(one_image, 3, size=SIZE, mosaic=False, mixup_prob=1.0, ratio_range=(1.0, 1.0))
    assert preview.changed_by == ["mixup"] * 3
    assert [len(t["labels"]) for _, t in preview.samples] == [2 * g] * 3  # every object listed twice


def test_mosaic_puts_several_copies_on_the_canvas(one_image):
    g = len(one_image[0][1]["labels"])
    preview = augmentation_preview(one_image, 2, size=SIZE, mixup_prob=0.0, ratio_range=(0.5, 0.5))
    assert preview.changed_by == ["mosaic"] * 2
    assert all(len(t["labels"]) > g for _, t in preview.samples)
    # ratio 0.5 shrinks the 2x canvas back to the canvas: the objects are half their letterboxed size, or cut
    assert preview.sizes.max() <= 0.5 * preview.source_sizes.max() + 1


def test_the_recipe_settings_give_the_package_pipeline(train_set):
    settings = T.REFERENCE_AUGMENT["tiny"]
    ours = augmentation_pipeline(SIZE, settings["ratio_range"], True, settings["mixup_prob"], "tiny")
    theirs = T.build_train_pipeline(SIZE, 1, recipe="tiny")
    assert repr(ours) == repr(theirs)
    rng_ours, rng_theirs = np.random.default_rng(0), np.random.default_rng(0)
    for i in range(7):
        a, b = ours(*train_set[i], rng_ours), theirs(*train_set[i], rng_theirs)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])
        assert torch.equal(a[1]["labels"], b[1]["labels"])


def test_figure_shows_each_sample_and_the_size_histogram(train_set):
    preview = augmentation_preview(train_set, 2, size=SIZE, seed=1, mixup_prob=1.0)
    fig = augmentation_figure(preview)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    for ax, changed, (_, target) in zip(fig.axes, preview.changed_by, preview.samples, strict=False):
        assert ax.get_title() == f"{changed}\n{len(target['labels'])} objects"
    assert fig.axes[-1].get_title() == "object sizes"
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["letterboxed inputs", "augmented"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=0), "count must be at least 1"),
    (dict(mixup_prob=1.5), r"mixup_prob must lie in \[0, 1\]"),
    (dict(recipe="huge"), "Unknown recipe 'huge'"),
    (dict(ratio_range=(2.0, 1.0)), "ratio_range"),
])
def test_bad_settings_are_named(train_set, kwargs, message):
    with pytest.raises(ValueError, match=message):
        augmentation_preview(train_set, **{"size": SIZE, **kwargs})


def test_an_empty_dataset_is_named():
    with pytest.raises(ValueError, match="at least one image"):
        augmentation_preview([], size=SIZE)
