"""Augmentation (chapter 07): every step keeps masks, boxes, labels and image consistent; caches, determinism,
HSV units, letterbox round trip, collate and per-worker seeding."""

import colorsys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from rtmdet_lesson.data import transforms as T
from rtmdet_lesson.data.collate import AugmentedDataset, collate, worker_init_fn
from rtmdet_lesson.data.sprites import render_sample
from rtmdet_lesson.data.transforms import geometry
from rtmdet_lesson.figures.augment import before_after_figure, samples_figure

PALETTE = torch.tensor([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180]])


def drawn_sample(h, w, seed, n=4, image_id=0, coloured=False):
    """Rectangles and ellipses drawn by hand on noise (or, ``coloured``, painted in their label's colour on grey)."""
    g = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    masks, labels = [], []
    for k in range(n):
        cy, cx = g.uniform(0, h), g.uniform(0, w)
        ry, rx = g.uniform(3, max(4, h / 4)), g.uniform(3, max(4, w / 4))
        if k % 2:
            mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
        else:
            mask = (abs(ys - cy) <= ry) & (abs(xs - cx) <= rx)
        for earlier in masks:  # later shapes occlude earlier ones, as in a real scene
            earlier &= ~mask
        masks.append(mask)
        labels.append(int(g.integers(0, 5)))
    masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.bool)
    labels = torch.tensor(labels, dtype=torch.int64)
    if coloured:
        image = torch.full((3, h, w), 114, dtype=torch.uint8)
        for mask, label in zip(masks, labels, strict=True):
            image[:, mask] = PALETTE[label].to(torch.uint8)[:, None]
    else:
        image = torch.from_numpy(g.integers(0, 256, (3, h, w), dtype=np.uint8))
    target = T.with_masks(dict(boxes=torch.zeros((len(labels), 4)), labels=labels, image_id=image_id), masks)
    return image, target


def sprite_sample(index):
    s = render_sample(seed=0, split="train", index=index)
    image = torch.from_numpy(s.image).permute(2, 0, 1).contiguous()  # (3, H, W)
    h, w = s.image.shape[:2]
    masks = torch.from_numpy(np.stack([i.mask for i in s.instances])) if s.instances else torch.zeros((0, h, w))
    labels = torch.tensor([i.label for i in s.instances], dtype=torch.int64)
    return image, dict(boxes=T.masks_to_boxes(masks.bool()), labels=labels, masks=masks.bool(), image_id=index)


SAMPLES = [drawn_sample(48, 80, 0), drawn_sample(90, 60, 1), drawn_sample(64, 64, 2, n=7), drawn_sample(50, 70, 3, n=0)]
SAMPLES += [sprite_sample(i) for i in range(4)]


def assert_consistent(image, target):
    T.check_sample(image, target)
    torch.testing.assert_close(target["boxes"], T.masks_to_boxes(target["masks"]), rtol=0, atol=0)
    assert bool(target["masks"].flatten(1).any(1).all()), "an empty mask was left behind"
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64


def coloured_fraction(image, target):
    """Share of mask pixels whose colour is their label's palette colour (masks aligned with the image)."""
    hits = total = 0
    for mask, label in zip(target["masks"], target["labels"], strict=True):
        close = (image.int() - PALETTE[label].int()[:, None, None]).abs().amax(0) <= 12  # (H, W)
        hits += int((close & mask).sum())
        total += int(mask.sum())
    return hits / max(total, 1)


# ------------------------------------------------------------------------------------------- the two rules


def test_masks_to_boxes_hand_values():
    masks = torch.zeros((3, 8, 10), dtype=torch.bool)
    masks[0, 2:5, 3:6] = True  # rows 2..4, columns 3..5
    masks[1, 7, 9] = True  # the bottom-right pixel
    boxes = T.masks_to_boxes(masks)
    assert boxes.tolist() == [[3, 2, 6, 5], [9, 7, 10, 8], [0, 0, 0, 0]]
    assert T.masks_to_boxes(torch.zeros((0, 5, 5), dtype=torch.bool)).shape == (0, 4)
    with pytest.raises(ValueError, match="G, H, W"):
        T.masks_to_boxes(torch.zeros(5, 5, dtype=torch.bool))


def test_with_masks_drops_empty_masks_and_keeps_labels_aligned():
    masks = torch.zeros((3, 6, 6), dtype=torch.bool)
    masks[0, 1, 1] = masks[2, 4:6, 2:4] = True
    target = T.with_masks(dict(labels=torch.tensor([7, 8, 9]), image_id=3), masks)
    assert target["labels"].tolist() == [7, 9] and target["image_id"] == 3
    assert target["boxes"].tolist() == [[1, 1, 2, 2], [2, 4, 4, 6]]


def test_check_sample_names_the_problem():
    image, target = SAMPLES[0]
    with pytest.raises(ValueError, match="uint8"):
        T.check_sample(image.float(), target)
    with pytest.raises(ValueError, match="match the image"):
        T.check_sample(image[:, :10], target)
    with pytest.raises(ValueError, match="one label"):
        T.check_sample(image, dict(target, labels=target["labels"][:1]))
    with pytest.raises(ValueError, match="numpy Generator"):
        T.eval_pipeline((64, 64))(image, target, rng=0)


# ------------------------------------------------------------------------------------------- each step


def warmed(transform, rng):
    """A mosaic/mixup with its cache past the pass-through threshold."""
    for sample in SAMPLES[:6]:
        transform(*sample, rng)
    return transform


STEPS = {
    "resize": lambda rng: T.RandomResize((128, 128), (0.5, 2.0)),
    "crop": lambda rng: T.RandomCrop((40, 40)),
    "resize_crop": lambda rng: T.RandomResizeCrop((128, 128), (0.5, 2.0), (64, 64)),
    "hsv": lambda rng: T.RandomHSV(),
    "flip": lambda rng: T.RandomFlip(1.0),
    "pad": lambda rng: T.Pad((400, 400)),
    "filter": lambda rng: T.FilterAnnotations(),
    "letterbox": lambda rng: T.LetterboxResize((96, 128)),
    "mosaic": lambda rng: warmed(T.CachedMosaic((64, 64), max_cached=8), rng),
    "mixup": lambda rng: warmed(T.CachedMixUp((64, 64), max_cached=8), rng),
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_step_keeps_masks_boxes_and_labels_consistent(name):
    rng = np.random.default_rng(0)
    step = STEPS[name](rng)
    for _ in range(3):
        for image, target in SAMPLES:
            if name == "mixup":  # mixup blends images of one size: the pipeline pads before it
                image, target = T.pad_sample(*T.crop_sample(image, target, 0, 0, 64, 64), (64, 64))
            out_image, out_target = step(image, target, rng)
            assert_consistent(out_image, out_target)
            if name not in ("mosaic", "mixup"):  # those two add instances from their caches
                assert out_target["masks"].shape[0] <= len(target["labels"])
            if name in ("hsv", "flip", "pad"):
                assert out_target["labels"].tolist() == target["labels"].tolist()


@pytest.mark.parametrize("stage", [1, 2])
def test_pipelines_stay_consistent_after_every_step_and_end_at_the_canvas_size(stage):
    rng = np.random.default_rng(stage)
    pipeline = T.build_train_pipeline(64, stage=stage, recipe="tiny")
    for k in range(14):
        image, target = SAMPLES[k % len(SAMPLES)]
        for step in pipeline.transforms:
            image, target = step(image, target, rng)
            assert_consistent(image, target)
        assert image.shape == (3, 64, 64)
        widths, heights = (target["boxes"][:, 2:] - target["boxes"][:, :2]).unbind(1)
        assert bool((widths > 1).all() and (heights > 1).all())  # FilterAnnotations ran last


def test_geometry_keeps_masks_on_their_pixels():
    """Objects painted in their label's colour must still wear it after resize, crop, flip, pad and mosaic."""
    rng = np.random.default_rng(5)
    pipeline = T.Compose(
        [
            T.CachedMosaic((96, 96), max_cached=6),
            T.RandomResizeCrop((192, 192), (0.5, 2.0), (96, 96)),
            T.RandomFlip(0.5),
            T.Pad((96, 96)),
        ]
    )
    fractions = []
    for k in range(12):
        image, target = pipeline(*drawn_sample(60 + 4 * k, 90 - 3 * k, 10 + k, n=5, coloured=True), rng)
        if len(target["labels"]):
            fractions.append(coloured_fraction(image, target))
    assert min(fractions) > 0.6 and np.mean(fractions) > 0.85, fractions  # edges blur; misplaced masks score ~0


def test_flip_twice_is_the_identity_and_mirrors_boxes():
    image, target = SAMPLES[1]
    once = T.hflip_sample(image, target)
    twice = T.hflip_sample(*once)
    assert torch.equal(twice[0], image) and torch.equal(twice[1]["masks"], target["masks"])
    assert torch.equal(twice[1]["boxes"], target["boxes"])
    w = image.shape[2]
    expected = torch.stack(
        [w - target["boxes"][:, 2], target["boxes"][:, 1], w - target["boxes"][:, 0], target["boxes"][:, 3]], dim=1
    )
    assert torch.equal(once[1]["boxes"], expected)


@pytest.mark.parametrize(
    ("size", "canvas"), [((90, 150), (320, 320)), ((250, 400), (320, 320)), ((120, 60), (96, 160))]
)
def test_letterbox_round_trips_boxes_within_a_pixel(size, canvas):
    image, target = drawn_sample(*size, seed=4, n=6)
    out_image, out_target, box = T.letterbox_sample(image, target, canvas)
    assert out_image.shape == (3, *canvas) and out_target["masks"].shape[1:] == canvas
    assert out_target["labels"].tolist() == target["labels"].tolist()  # nothing this big vanishes
    back = box.boxes_to_original(out_target["boxes"])
    assert (back - target["boxes"]).abs().max() <= 1.0
    assert bool((out_image[:, box.resized_size[0] :] == 114).all())  # grey padding at the bottom


def test_crop_can_leave_zero_instances_and_later_steps_cope():
    image, target = drawn_sample(60, 60, 0, n=0)
    masks = torch.zeros((1, 60, 60), dtype=torch.bool)
    masks[0, 50:, 50:] = True
    image, target = image, T.with_masks(dict(target, labels=torch.tensor([2])), masks)
    image, target = T.crop_sample(image, target, 0, 0, 30, 30)
    assert target["masks"].shape == (0, 30, 30) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    rng = np.random.default_rng(0)
    for step in T.build_train_pipeline(32, stage=1).transforms:
        image, target = step(image, target, rng)
        assert_consistent(image, target)


def test_caches_below_the_threshold_pass_samples_through_unchanged():
    rng = np.random.default_rng(0)
    mosaic, mixup = T.CachedMosaic((64, 64)), T.CachedMixUp((64, 64))
    for k in range(4):  # mosaic needs more than 4 cached samples
        image, target = SAMPLES[k]
        out = mosaic(image, target, rng)
        assert out[0] is image and out[1] is target
    assert mixup(*SAMPLES[0], rng)[0] is SAMPLES[0][0]  # mixup needs more than 1
    out_image, out_target = mosaic(*SAMPLES[4], rng)
    assert out_image.shape == (3, 128, 128)  # the fifth sample makes a mosaic on the 2x canvas


def test_cache_fifo_and_random_pop():
    rng = np.random.default_rng(0)
    fifo = T.CachedMosaic((32, 32), max_cached=5, random_pop=False)
    for k in range(8):
        fifo(*SAMPLES[k], rng)
    assert [t["image_id"] for _, t in fifo.cache.items] == [SAMPLES[k][1]["image_id"] for k in range(3, 8)]
    random_pop = T.CachedMosaic((32, 32), max_cached=5, random_pop=True)
    for k in range(8):
        random_pop(*SAMPLES[k], rng)
    assert len(random_pop.cache.items) == 5
    random_pop.reset()
    assert random_pop.cache.items == []


def test_mixup_blends_half_and_half_and_keeps_both_instance_sets():
    def solid(value, label):
        masks = torch.zeros((1, 32, 32), dtype=torch.bool)
        masks[0, 4:28, 6:20] = True
        image = torch.full((3, 32, 32), value, dtype=torch.uint8)
        return image, T.with_masks(dict(labels=torch.tensor([label]), image_id=label), masks)

    outcomes = set()
    for seed in range(8):
        mixup = T.CachedMixUp((32, 32), max_cached=2, random_pop=False)
        mixup.cache.items = [solid(100, 1)]  # the partner; the input joins the cache and may be drawn too
        image, target = mixup(*solid(20, 0), np.random.default_rng(seed))
        outcomes.add(tuple(target["labels"].tolist()))
        if target["labels"].tolist() == [0, 1]:  # mixed with the partner: floor(0.5 * 20 + 0.5 * 100)
            assert set(torch.unique(image).tolist()) == {60}  # ratio 1.0 on same-size images: no grey left
            mirrored = torch.equal(target["masks"][1], target["masks"][0].flip(-1))
            assert mirrored or torch.equal(target["masks"][1], target["masks"][0])
        else:  # mixed with itself
            assert target["labels"].tolist() == [0, 0] and set(torch.unique(image).tolist()) == {20}
    assert (0, 1) in outcomes


def test_same_seed_same_augmentations_and_other_seeds_differ():
    def run(seed):
        rng = np.random.default_rng(seed)
        pipeline = T.build_train_pipeline(64, stage=1)
        return [pipeline(*SAMPLES[k % len(SAMPLES)], rng) for k in range(10)]

    a, b, c = run(3), run(3), run(4)
    for (ia, ta), (ib, tb) in zip(a, b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ta["masks"], tb["masks"]) and torch.equal(ta["boxes"], tb["boxes"])
    assert any(not torch.equal(ia, ic) for (ia, _), (ic, _) in zip(a, c, strict=True))


def test_stage2_is_its_functions_fed_the_draws_in_order():
    """Stage 2 against the deterministic functions fed, from a twin generator, the draws in the order the pipeline
    makes them: resize ratio; crop top, left; HSV gains (3 uniform, 3 integer); flip. An exact resume replays the
    pipeline, so this order (and nothing else drawing) is what it relies on."""
    rng, twin = np.random.default_rng(11), np.random.default_rng(11)
    pipeline = T.build_train_pipeline(64, stage=2, recipe="m")  # ratio range (0.1, 2.0)
    for image, target in SAMPLES * 2:
        got_image, got = pipeline(image, target, rng)
        h, w = image.shape[1:]
        fit = int(64 * twin.uniform(0.1, 2.0))
        factor = min(fit / h, fit / w)
        rh, rw = max(1, round(h * factor)), max(1, round(w * factor))
        ch, cw = min(64, rh), min(64, rw)
        top, left = int(twin.integers(0, rh - ch + 1)), int(twin.integers(0, rw - cw + 1))
        out = T.crop_sample(*T.resize_sample(image, target, (rh, rw)), top, left, ch, cw)
        hue, sat, val = np.trunc(twin.uniform(-1, 1, 3) * np.array([5, 30, 30]) * twin.integers(0, 2, 3))
        out = T.hsv_shift(out[0], float(hue), float(sat), float(val)), out[1]
        if twin.uniform() < 0.5:
            out = T.hflip_sample(*out)
        want_image, want = T.filter_annotations(*T.pad_sample(*out, (64, 64)))
        assert torch.equal(got_image, want_image)
        assert all(torch.equal(got[key], want[key]) for key in ("boxes", "labels", "masks"))
    assert rng.bit_generator.state == twin.bit_generator.state  # no draw more, none less


def test_mosaic_draws_in_order_and_puts_the_input_top_left():
    """CachedMosaic against a twin generator and a hand-kept cache: on overflow one integer draw picks the sample
    to drop (random pop); then the probability draw, three integer draws for the partners, the centre x, y.
    Solid images, one whole-image mask each, with label = colour index: the pixels around the centre and the
    labels of the output name the four pieces."""
    colours = torch.tensor([[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0], [0, 200, 200], [200, 0, 200],
                            [90, 90, 90], [255, 255, 255]], dtype=torch.uint8)

    def solid(k):
        h, w = 20 + 3 * k, 34 - 2 * k
        masks = torch.ones((1, h, w), dtype=torch.bool)
        image = colours[k][:, None, None].expand(3, h, w).contiguous()
        return image, T.with_masks(dict(labels=torch.tensor([k]), image_id=k), masks)

    mosaic = T.CachedMosaic((32, 32), max_cached=5, random_pop=True)
    rng, twin = np.random.default_rng(2), np.random.default_rng(2)
    cache = []
    for step in range(16):
        k = step % len(colours)
        image, target = mosaic(*solid(k), rng)
        cache.append(k)
        if len(cache) > 5:
            cache.pop(int(twin.integers(len(cache))))
        if len(cache) <= 4:
            assert target["labels"].tolist() == [k]
            continue
        twin.uniform()  # the probability draw (prob 1.0)
        others = [cache[int(twin.integers(len(cache)))] for _ in range(3)]
        cx, cy = int(twin.uniform(0.5, 1.5) * 32), int(twin.uniform(0.5, 1.5) * 32)
        assert target["labels"].tolist() == [k, *others]  # every piece shows: the centre is inside [16, 48]
        around = [image[:, cy - 1, cx - 1], image[:, cy - 1, cx], image[:, cy, cx - 1], image[:, cy, cx]]
        assert [int((colours.int() - p.int()).abs().sum(1).argmin()) for p in around] == [k, *others]
    assert rng.bit_generator.state == twin.bit_generator.state


def test_fused_resize_crop_equals_resize_then_crop():
    for k, sample in enumerate(SAMPLES):
        fused = T.RandomResizeCrop((128, 128), (0.5, 2.0), (64, 64))(*sample, np.random.default_rng(k))
        rng = np.random.default_rng(k)
        two_steps = T.RandomCrop((64, 64))(*T.RandomResize((128, 128), (0.5, 2.0))(*sample, rng), rng)
        assert torch.equal(fused[0], two_steps[0])
        for key in ("masks", "boxes", "labels"):
            assert torch.equal(fused[1][key], two_steps[1][key])


def test_a_resize_to_the_same_size_returns_its_input_because_the_kernels_would():
    """Why ``_resize_image`` and ``_resize_masks`` skip their kernels at the same size (mosaic and mixup pieces
    often are the canvas size): the uint8 bilinear kernel and the nearest index give the input back exactly."""
    image = torch.randint(0, 256, (3, 45, 70), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    pixels = image[None].contiguous(memory_format=torch.channels_last)
    kernel = torch.nn.functional.interpolate(pixels, size=(45, 70), mode="bilinear", align_corners=False,
                                             antialias=True)[0]
    assert torch.equal(kernel, image) and geometry._resize_image(image, (45, 70)) is image
    assert torch.equal(geometry._nearest_index(70, 70, "cpu"), torch.arange(70))
    masks = SAMPLES[2][1]["masks"]
    assert geometry._resize_masks(masks, tuple(masks.shape[1:])) is masks


def test_fused_resize_crop_resizes_only_the_instances_the_window_sees():
    """An instance outside the crop's source rectangle is never resized, and the answer is still the two steps'."""
    image, target = drawn_sample(60, 200, 4, n=0)
    masks = torch.zeros(3, 60, 200, dtype=torch.bool)
    masks[0, 10:30, 5:40] = True  # left: inside the window below
    masks[1, 20:50, 150:190] = True  # right: outside it
    masks[2, 3:15, 60:90] = True  # straddles the window's top and right edges
    target = T.with_masks(target, masks, torch.tensor([0, 1, 2]))
    size, window = (120, 400), (10, 20, 60, 120)  # x2; source rows 5..34, columns 10..69
    fused_image, fused = T.resize_crop_sample(image, target, size, window)
    two_image, two = T.crop_sample(*T.resize_sample(image, target, size), *window)
    assert torch.equal(fused_image, two_image) and fused["labels"].tolist() == two["labels"].tolist() == [0, 2]
    assert torch.equal(fused["masks"], two["masks"]) and torch.equal(fused["boxes"], two["boxes"])


def test_image_resize_is_within_one_grey_level_of_the_float_computation():
    """The uint8 kernel (fixed-point weights) against bilinear in float, rounded: shrinking (antialiased),
    enlarging, non-square, one pixel; the result is a contiguous uint8 image of the asked size."""
    image = torch.randint(0, 256, (3, 45, 70), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, 45, 70, dtype=torch.bool), "image_id": 0}
    for size in [(20, 31), (45, 70), (90, 200), (1, 1), (97, 33)]:
        out, _ = T.resize_sample(image, target, size)
        exact = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear",
                                                align_corners=False, antialias=True)[0].round()
        assert out.dtype == torch.uint8 and out.shape == (3, *size) and out.is_contiguous()
        assert (out.float() - exact).abs().max() <= 1, size


def test_random_resize_keeps_the_ratio_inside_the_scale():
    image, target = SAMPLES[1]  # 90 x 60
    for seed in range(5):
        out, _ = T.RandomResize((100, 100), (0.5, 2.0))(image, target, np.random.default_rng(seed))
        h, w = out.shape[1:]
        assert abs(h / w - 1.5) < 0.05 and 50 <= max(h, w) <= 200


def test_pad_and_filter():
    image, target = SAMPLES[0]
    padded, padded_target = T.pad_sample(image, target, (64, 100))
    assert bool((padded[:, 48:] == 114).all()) and bool((padded[:, :, 80:] == 114).all())
    assert not bool(padded_target["masks"][:, 48:].any()) and torch.equal(padded_target["boxes"], target["boxes"])
    with pytest.raises(ValueError, match="crop or resize"):
        T.pad_sample(image, target, (40, 100))
    masks = torch.zeros((3, 10, 10), dtype=torch.bool)
    masks[0, 2:8, 3] = True  # one pixel wide: dropped
    masks[1, 5, 1:9] = True  # one pixel tall: dropped
    masks[2, 1:3, 1:3] = True  # 2 x 2: kept
    sample = (torch.zeros((3, 10, 10), dtype=torch.uint8), T.with_masks(dict(labels=torch.tensor([0, 1, 2])), masks))
    _, kept = T.filter_annotations(*sample)
    assert kept["labels"].tolist() == [2] and kept["masks"].shape == (1, 10, 10)


# ------------------------------------------------------------------------------------------- colour


def test_hsv_zero_shift_is_the_identity_and_hue_matches_colorsys():
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8))
    assert torch.equal(T.hsv_shift(image, 0, 0, 0), image)
    hsv = T.rgb_to_hsv(image)
    for y, x in [(0, 0), (3, 7), (15, 15), (8, 2)]:
        h, s, v = colorsys.rgb_to_hsv(*(image[:, y, x].double() / 255).tolist())
        torch.testing.assert_close(hsv[:, y, x].double(), torch.tensor([h * 180, s * 255, v * 255]).double())


def test_hsv_round_trip_is_exact_for_every_colour():
    """``hsv_shift`` returns a zero shift's image without converting; this is why that is the same answer."""
    for red in range(0, 256, 32):  # 8 chunks of 32 x 256 x 256 colours
        rgb = torch.stack(torch.meshgrid(torch.arange(red, red + 32), torch.arange(256), torch.arange(256),
                                         indexing="ij")).reshape(3, 32 * 256, 256).to(torch.uint8)
        assert torch.equal(T.hsv_to_rgb(T.rgb_to_hsv(rgb)), rgb), red


def _textbook_hsv_shift(image: torch.Tensor, hue: float, saturation: float, value: float):
    """The conversions as usually written (torch.where for the maximum's channel, remainders for the wraps): the
    slow twin that ``rgb_to_hsv`` / ``hsv_to_rgb``'s mask arithmetic must match to the bit."""
    x = image.float()
    r, g, b = x
    v = x.amax(dim=0)
    chroma = v - x.amin(dim=0)
    s = 255 * chroma / v.clamp(min=1e-6)
    c = chroma.clamp(min=1e-6)
    sextant = torch.where(v == r, (g - b) / c, torch.where(v == g, (b - r) / c + 2, (r - g) / c + 4))
    h = torch.remainder(sextant, 6) * 30
    hsv = torch.stack([h, s, v])
    h, s, v = torch.remainder(h + hue, 180), (s + saturation).clamp(0, 255), (v + value).clamp(0, 255)
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0])[:, None, None] + h / 30, 6)
    rgb = v - v * (s / 255) * torch.minimum(k, 4 - k).clamp(0, 1)
    return hsv, rgb.round().clamp(0, 255).to(torch.uint8)


def test_hsv_matches_the_textbook_formulas_to_the_bit_for_every_colour():
    for red in range(0, 256, 32):  # 8 chunks of 32 x 256 x 256 colours
        rgb = torch.stack(torch.meshgrid(torch.arange(red, red + 32), torch.arange(256), torch.arange(256),
                                         indexing="ij")).reshape(3, 32 * 256, 256).to(torch.uint8)
        for shift in [(3.0, 10.0, -7.0), (-5.0, -30.0, 30.0)]:
            hsv, shifted = _textbook_hsv_shift(rgb, *shift)
            if shift[0] == 3.0:
                assert torch.equal(T.rgb_to_hsv(rgb), hsv), red
            assert torch.equal(T.hsv_shift(rgb, *shift), shifted), (red, shift)


def test_a_shift_moves_grey_by_value_only_and_colours_by_hand_values():
    grey = torch.full((3, 1, 1), 100, dtype=torch.uint8)
    assert T.hsv_shift(grey, 5, 0, 20)[:, 0, 0].tolist() == [120, 120, 120]  # hue means nothing without chroma
    blue = torch.tensor([0, 0, 200], dtype=torch.uint8).view(3, 1, 1)  # H 120 (240 degrees), S 255, V 200
    assert T.hsv_shift(blue, 0, -51, 0)[:, 0, 0].tolist() == [40, 40, 200]  # S 204: min = V (1 - 204/255)
    assert T.hsv_shift(blue, 30, 0, 0)[:, 0, 0].tolist() == [200, 0, 200]  # H 150 (300 degrees): magenta


def test_hue_wraps_and_saturation_value_clip():
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)
    assert T.rgb_to_hsv(red)[0].item() == 0
    minus = T.hsv_shift(red, -5, 0, 0)[:, 0, 0].tolist()  # hue 0 -> 175 (350 degrees): red with some blue
    plus = T.hsv_shift(red, 5, 0, 0)[:, 0, 0].tolist()  # hue 10 (20 degrees): red with some green
    assert minus[:2] == [255, 0] and minus[2] in (42, 43)
    assert plus[0] == 255 and plus[1] in (42, 43) and plus[2] == 0
    grey = torch.full((3, 1, 1), 100, dtype=torch.uint8)
    assert T.hsv_shift(grey, 0, 0, 300)[:, 0, 0].tolist() == [255, 255, 255]
    assert T.hsv_shift(red, 0, -300, 0)[:, 0, 0].tolist() == [255, 255, 255]  # no saturation: white at V=255


def test_random_hsv_changes_colour_only():
    rng = np.random.default_rng(1)
    image, target = SAMPLES[4]
    outs = [T.RandomHSV()(image, target, rng) for _ in range(6)]
    assert all(out[1] is target for out in outs)
    assert any(not torch.equal(out[0], image) for out in outs)
    assert all((out[0].int() - image.int()).abs().max() <= 80 for out in outs)


# ------------------------------------------------------------------------------------------- stages, batches


def test_two_stage_switch_and_eval_pipeline():
    pipeline = T.train_pipeline((64, 64), max_epochs=10, stage2_epochs=2)
    assert pipeline.switch_epoch == 8 and pipeline.current is pipeline.stage1
    pipeline.set_epoch(8)
    assert pipeline.current is pipeline.stage2
    assert not any(isinstance(t, (T.CachedMosaic, T.CachedMixUp)) for t in pipeline.stage2.transforms)
    image, target = T.eval_pipeline((96, 96))(*SAMPLES[1], np.random.default_rng(0))
    assert image.shape == (3, 96, 96) and target["letterbox"].scale_y == pytest.approx(96 / 90)
    with pytest.raises(ValueError, match="recipe"):
        T.build_train_pipeline(64, recipe="huge")


def test_collate_stacks_and_explains_size_mismatch():
    rng = np.random.default_rng(0)
    pipeline = T.build_train_pipeline(64, stage=2)
    samples = [pipeline(*s, rng) for s in SAMPLES[:3]]
    images, targets = collate(samples)
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8 and len(targets) == 3
    with pytest.raises(ValueError, match="pads to a fixed size"):
        collate([SAMPLES[0], SAMPLES[1]])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_augmented_dataset_is_reproducible_per_epoch_and_worker():
    dataset = AugmentedDataset(SAMPLES, T.train_pipeline((64, 64), max_epochs=4, stage2_epochs=1), seed=7)

    def epoch_batches(epoch, workers):
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_size=2,
            num_workers=workers,
            collate_fn=collate,
            worker_init_fn=worker_init_fn if workers else None,
        )
        return [images for images, _ in loader]

    first, again = epoch_batches(0, 2), epoch_batches(0, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(first, epoch_batches(1, 2), strict=True))
    assert dataset.pipeline.current is dataset.pipeline.stage1
    in_process = epoch_batches(3, 0)
    assert dataset.pipeline.current is dataset.pipeline.stage2 and in_process[0].shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="inside DataLoader workers"):
        worker_init_fn(0)


def test_figures_return_figures():
    rng = np.random.default_rng(0)
    before = SAMPLES[4]
    after = T.build_train_pipeline(64, stage=2)(*before, rng)
    assert isinstance(before_after_figure(before, after, "stage 2"), Figure)
    assert isinstance(samples_figure([before, after, SAMPLES[3]]), Figure)
    with pytest.raises(ValueError):
        samples_figure([])
