"""DecodedCache (chapter 09): the dataset's samples value for value, copies that augmentation may change, an
exact size estimate, a clear refusal when memory is short, a training run that does not notice it, and
``--cache-images auto`` (what ``--fast`` sets) caching only what fits."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from rtmdet_lesson.data import cache as cache_module
from rtmdet_lesson.data.cache import DecodedCache, packed_bytes
from rtmdet_lesson.data.coco import CocoInstanceDataset, sprites_split
from rtmdet_lesson.data.sprites import generate_sprites
from rtmdet_lesson.train import TrainConfig, train


@pytest.fixture(scope="module")
def sprites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sprites")
    generate_sprites(root, seed=0, n_train=8, n_val=0)
    return root


@pytest.fixture
def odd(tmp_path) -> CocoInstanceDataset:
    """Width 37 (not a multiple of 8: the last packed byte is partial), an image without objects, a crowd region,
    and one-pixel masks at the right edge."""
    h, w = 11, 37
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "images" / name)
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [2, 1, 30, 8],
         "segmentation": [[2, 1, 32, 1, 32, 9, 2, 9]]},
        {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [35, 3, 2, 2],
         "segmentation": [[35, 3, 37, 3, 37, 5, 35, 5]]},
        {"id": 3, "image_id": 1, "category_id": 2, "iscrowd": 1, "bbox": [0, 0, 37, 11],
         "segmentation": [[0, 0, 37, 0, 37, 11, 0, 11]]},
    ]  # fmt: skip
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w},
                       {"id": 2, "file_name": "b.png", "height": h, "width": w}],
            "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}], "annotations": annotations}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    return CocoInstanceDataset(tmp_path / "images", tmp_path / "instances.json")


def assert_same_sample(a, b) -> None:
    (image_a, target_a), (image_b, target_b) = a, b
    assert image_a.dtype == image_b.dtype and torch.equal(image_a, image_b)
    assert target_a.keys() == target_b.keys()
    for key, value in target_a.items():
        if torch.is_tensor(value):
            assert value.dtype == target_b[key].dtype and value.shape == target_b[key].shape, key
            assert torch.equal(value, target_b[key]), key
        else:
            assert value == target_b[key], key


@pytest.mark.parametrize("which", ["sprites", "odd"])
def test_every_sample_is_the_datasets_own(which, sprites, odd):
    dataset = sprites_split(sprites, "train") if which == "sprites" else odd
    cached = DecodedCache(dataset)
    assert len(cached) == len(dataset) and cached.class_names == dataset.class_names
    for i in range(len(dataset)):
        assert_same_sample(dataset[i], cached[i])
    if which == "odd":
        assert cached[0][1]["masks"].shape == (2, 11, 37) and cached[0][1]["masks"][1, 3:5, 35:].all()
        assert cached[1][1]["masks"].shape == (0, 11, 37)  # no objects: an empty stack of the image's size
    assert cached.nbytes == packed_bytes(dataset)  # the estimate made before decoding is exact


def test_samples_are_copies(odd):
    cached = DecodedCache(odd)
    image, target = cached[0]
    image.zero_()
    target["boxes"].zero_()
    target["masks"].zero_()
    assert_same_sample(odd[0], cached[0])


def test_refuses_when_memory_is_short(odd, monkeypatch):
    monkeypatch.setattr(cache_module, "available_memory_bytes", lambda: 2 * packed_bytes(odd) - 1)
    with pytest.raises(MemoryError, match="with --cache-images off"):
        DecodedCache(odd)
    monkeypatch.setattr(cache_module, "available_memory_bytes", lambda: None)  # cannot tell: it tries
    assert len(DecodedCache(odd)) == 2


def test_training_with_the_cache_takes_the_same_steps(sprites, tmp_path):
    settings = dict(data=str(sprites), image_size=64, epochs=1, batch_size=4, workers=0, lr=0.002, warmup_iters=1,
                    mosaic=False, mixup=False, stage2_epochs=0, eval_interval=100, progress=False)
    plain, cached = (train(TrainConfig(out=str(tmp_path / cache), cache_images=cache, **settings))
                     for cache in ("off", "on"))
    logs = [[json.loads(line) for line in (tmp_path / c / "log.jsonl").read_text().splitlines()]
            for c in ("off", "on")]
    losses = [[r["loss"] for r in log if "event" not in r] for log in logs]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    plain_state, cached_state = plain["train_model"].state_dict(), cached["train_model"].state_dict()
    assert plain_state.keys() == cached_state.keys()
    for key, value in plain_state.items():
        assert torch.equal(value, cached_state[key]), key


@pytest.mark.parametrize("fits", [True, False])
def test_auto_caches_only_what_fits_and_says_which(sprites, tmp_path, monkeypatch, caplog, fits):
    needed = packed_bytes(sprites_split(sprites, "train"))
    monkeypatch.setattr(cache_module, "available_memory_bytes", lambda: 2 * needed + (1 if fits else -1))
    settings = dict(data=str(sprites), image_size=64, epochs=1, batch_size=4, workers=0, warmup_iters=1,
                    mosaic=False, mixup=False, stage2_epochs=0, eval_interval=100, progress=False)
    with caplog.at_level(logging.INFO, logger="rtmdet_lesson.train"):
        train(TrainConfig(out=str(tmp_path), cache_images="auto", **settings), max_iters=1)
    cached, refused = "decoded 8 training images into memory", "--cache-images auto: not caching, caching the"
    assert (cached in caplog.text, refused in caplog.text) == (fits, not fits)
