"""Post-processing: candidates, boxes, NMS order, masks against plain per-instance loops, letterbox geometry."""

import math

import pytest
import torch
import torch.nn.functional as F

from rtmdet_lesson.head import HeadOutput
from rtmdet_lesson.postprocess import (
    DEPLOY,
    EVAL,
    InferenceConfig,
    mask_logits_to_original,
    postprocess,
    resolve_config,
    select_candidates,
)
from rtmdet_lesson.preprocess import Letterbox, letterbox_image, normalize
from rtmdet_lesson.presets import build_model

CANVAS = 128  # levels 16x16, 8x8, 4x4
SIZES = [(16, 16), (8, 8), (4, 4)]


def test_presets_are_the_reference_test_settings():
    assert (EVAL.score_thr, EVAL.nms_pre, EVAL.iou_threshold, EVAL.max_per_img, EVAL.mask_thr) == (
        0.05, 1000, 0.6, 100, 0.5)
    assert DEPLOY.score_thr > EVAL.score_thr and DEPLOY.nms_pre < EVAL.nms_pre
    assert DEPLOY.max_per_img < EVAL.max_per_img
    assert resolve_config("deploy", score_thr=0.7).score_thr == 0.7
    with pytest.raises(ValueError, match="eval"):
        resolve_config("fast")
    with pytest.raises(ValueError, match="mask_thr"):
        InferenceConfig(mask_thr=1.0)
    with pytest.raises(ValueError, match="max_per_img"):
        InferenceConfig(max_per_img=0)


def plain_candidates(levels, thr, nms_pre):
    out, offset = [], 0
    for logits in levels:
        c, h, w = logits.shape
        pairs = []
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    s = 1 / (1 + math.exp(-float(logits[k, i, j])))
                    if s > thr:
                        pairs.append((s, offset + i * w + j, k))
        pairs.sort(key=lambda p: -p[0])
        out += pairs[:nms_pre]
        offset += h * w
    return out


def test_select_candidates_is_multi_label_per_level_topk():
    g = torch.Generator().manual_seed(0)
    levels = [torch.randn(3, h, w, generator=g) * 2 for h, w in SIZES]
    prior_index, labels, scores = select_candidates(levels, 0.6, 20)
    expected = plain_candidates(levels, 0.6, 20)
    assert ((prior_index < 256).sum(), ((prior_index >= 256) & (prior_index < 320)).sum()) == (20, 20)  # capped
    assert prior_index.tolist() == [p for _, p, _ in expected]
    assert labels.tolist() == [k for _, _, k in expected]
    torch.testing.assert_close(scores, torch.tensor([s for s, _, _ in expected]))
    assert len(set(prior_index.tolist())) < len(prior_index)  # some prior gives two classes: multi-label


@pytest.mark.parametrize("nms_pre", [1, 7, 63, 64, 65, 200, 639, 640, 5000])
def test_select_candidates_top_priors_hold_the_best_pairs_even_when_few_priors_hold_them_all(nms_pre):
    """The top-k runs over the k priors with the best top class (select_candidates' docstring); here two
    priors own the 20 best pairs of an 8x8 level with 10 classes, and k crosses the prior count (64) and the
    pair count (640)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 8, 8, generator=g)  # (C, H, W), distinct values: no ties to break
    logits[:, 2, 5] += 20.0
    logits[:, 7, 0] += 10.0
    prior_index, labels, scores = select_candidates([logits], 0.3, nms_pre)
    flat = logits.permute(1, 2, 0).reshape(-1)  # every pair, prior-major
    best, index = flat.topk(min(nms_pre, flat.numel()))
    index = index[best.sigmoid() > 0.3]
    assert prior_index.tolist() == (index // 10).tolist() and labels.tolist() == (index % 10).tolist()
    assert torch.equal(scores, flat[index].sigmoid())


def synthetic_outputs(instances, num_classes=3, with_mask=True):
    """HeadOutput whose instances have known boxes and a mask that is exactly "inside the box, shrunk by 8 px".

    instances: list of (level, row, col, label, (l, t, r, b)). The dynamic kernel turns box violations of the
    relative coordinates into a negative logit: logit = 0.5 - 40 * sum(relu(side violation)).
    """
    cls = [torch.full((1, num_classes, h, w), -10.0) for h, w in SIZES]
    reg = [torch.zeros(1, 4, h, w) for h, w in SIZES]
    ker = [torch.zeros(1, 169, h, w) for h, w in SIZES]
    for level, row, col, label, dist in instances:
        s = 8 * 2**level
        cls[level][0, label, row, col] = 5.0
        reg[level][0, :, row, col] = torch.tensor(dist, dtype=torch.float32)
        l, t, r, b = (d - 8 for d in dist)  # shrink the mask by 8 px per side
        n = s * 8  # relative coordinates are (prior - grid) / (stride * 8)
        w0 = torch.zeros(8, 10)
        b0 = torch.zeros(8)
        # grid left of the box: rel_x > l/n ; right: -rel_x > r/n ; above: rel_y > t/n ; below: -rel_y > b/n
        w0[0, 0], b0[0] = 1.0, -l / n
        w0[1, 0], b0[1] = -1.0, -r / n
        w0[2, 1], b0[2] = 1.0, -t / n
        w0[3, 1], b0[3] = -1.0, -b / n
        w1 = torch.eye(8)
        b1 = torch.zeros(8)
        w2 = torch.zeros(1, 8)
        w2[0, :4] = -40.0 * n / 8  # in pixels of violation / 8
        b2 = torch.tensor([0.5])
        kernel = torch.cat([w0.flatten(), w1.flatten(), w2.flatten(), b0, b1, b2])
        ker[level][0, :, row, col] = kernel
    if not with_mask:
        return HeadOutput(cls, reg)
    return HeadOutput(cls, reg, ker, torch.zeros(1, 8, 16, 16))


# (level, row, col, label, (l, t, r, b)) on a 128x128 canvas
INSTANCES = [(0, 6, 6, 1, (24.0, 32.0, 32.0, 40.0)), (1, 2, 5, 0, (40.0, 24.0, 24.0, 16.0))]
# canvas boxes: (24, 16, 80, 88) and (40, 8, 104, 48)


def test_boxes_scores_labels_from_synthetic_outputs():
    box = Letterbox(1.0, 1.0, 0, 0, (128, 128), (128, 128))
    (found,) = postprocess(synthetic_outputs(INSTANCES), [box], EVAL)
    assert found.labels.tolist() == [1, 0]  # equal scores keep level order
    torch.testing.assert_close(found.boxes, torch.tensor([[24.0, 16, 80, 88], [40, 8, 104, 48]]))
    torch.testing.assert_close(found.scores, torch.sigmoid(torch.tensor([5.0, 5.0])))
    assert found.prior_index.tolist() == [6 * 16 + 6, 256 + 2 * 8 + 5]
    assert found.masks.shape == (2, 128, 128) and found.masks.dtype == torch.bool


@pytest.mark.parametrize(
    "letterbox",
    [
        Letterbox(2.0, 1.2, 0, 0, (100, 50), (128, 128)),  # non-uniform: x stretched more than y
        Letterbox(0.5, 1.25, 4, 8, (96, 200), (128, 128)),  # the other way round, with padding on both sides
    ],
)
def test_masks_stay_inside_their_boxes_with_non_uniform_scales(letterbox):
    """The swapped-scale bug (mmdetection #10179, #11230; fixed by PR #11231) makes masks miss their boxes on
    non-uniform resizes."""
    (found,) = postprocess(synthetic_outputs(INSTANCES), [letterbox], EVAL)
    h0, w0 = letterbox.original_size
    assert found.masks.shape == (2, h0, w0)
    ys, xs = torch.meshgrid(torch.arange(h0), torch.arange(w0), indexing="ij")
    for (_, _, _, _, _dist), box, mask in zip(INSTANCES, found.boxes, found.masks, strict=True):
        x1, y1, x2, y2 = box.tolist()
        assert mask.sum() > 0.5 * (x2 - x1 - 16 / letterbox.scale_x) * (y2 - y1 - 16 / letterbox.scale_y)
        # pixel (x, y) covers [x, x+1): inside the box up to one pixel of interpolation blur
        assert (xs[mask] >= x1 - 1).all() and (xs[mask] + 1 <= x2 + 1).all()
        assert (ys[mask] >= y1 - 1).all() and (ys[mask] + 1 <= y2 + 1).all()


def test_box_geometry_through_the_letterbox():
    letterbox = Letterbox(2.0, 1.2, 0, 0, (100, 50), (128, 128))
    (found,) = postprocess(synthetic_outputs(INSTANCES), [letterbox], EVAL)
    # canvas (24, 16, 80, 88) -> x / 2, y / 1.2; canvas (40, 8, 104, 48) -> x clamped to the image width 50
    torch.testing.assert_close(found.boxes, torch.tensor([[12.0, 16 / 1.2, 40, 88 / 1.2], [20, 8 / 1.2, 50, 40]]))


def test_no_candidates_gives_empty_instances_with_the_right_shapes():
    box = Letterbox(1.0, 1.0, 0, 0, (90, 128), (128, 128))
    for with_mask in (True, False):
        (found,) = postprocess(synthetic_outputs([], with_mask=with_mask), [box], EVAL)
        assert len(found) == 0
        assert found.boxes.shape == (0, 4) and found.scores.shape == (0,) and found.labels.dtype == torch.int64
        assert (found.masks.shape == (0, 90, 128)) if with_mask else found.masks is None
        assert found.to_coco(1) == []


def test_detection_outputs_have_no_masks():
    box = Letterbox(1.0, 1.0, 0, 0, (128, 128), (128, 128))
    (found,) = postprocess(synthetic_outputs(INSTANCES, with_mask=False), [box], EVAL)
    assert len(found) == 2 and found.masks is None
    assert "segmentation" not in found.to_coco(7)[0]


def test_nms_and_max_per_img():
    # the same box predicted by neighbouring priors of one class: NMS keeps the best
    dup = [(0, 6, 6, 1, (24.0, 32.0, 32.0, 40.0)), (0, 6, 7, 1, (32.0, 32.0, 24.0, 40.0))]
    outputs = synthetic_outputs(dup)
    outputs.cls_scores[0][0, 1, 6, 7] = 4.0
    box = Letterbox(1.0, 1.0, 0, 0, (128, 128), (128, 128))
    (found,) = postprocess(outputs, [box], EVAL)
    assert found.prior_index.tolist() == [6 * 16 + 6]
    (found,) = postprocess(synthetic_outputs(INSTANCES), [box], InferenceConfig(max_per_img=1))
    assert len(found) == 1


def test_letterbox_canvas_must_match_the_outputs():
    with pytest.raises(ValueError, match="canvas"):
        postprocess(synthetic_outputs(INSTANCES), [Letterbox(1.0, 1.0, 0, 0, (64, 64), (64, 64))], EVAL)


def plain_mask_logits(mask_feats, kernel, prior):
    """One instance, three explicit F.conv2d calls with (out, in, 1, 1) weights; coordinates by hand."""
    _, h, w = mask_feats.shape
    ys, xs = torch.meshgrid(torch.arange(h) * 8.0, torch.arange(w) * 8.0, indexing="ij")
    norm = prior[2] * 8
    x = torch.cat([((prior[0] - xs) / norm)[None], ((prior[1] - ys) / norm)[None], mask_feats])[None]
    w0, w1, w2 = kernel[:80].view(8, 10, 1, 1), kernel[80:144].view(8, 8, 1, 1), kernel[144:152].view(1, 8, 1, 1)
    b0, b1, b2 = kernel[152:160], kernel[160:168], kernel[168:169]
    x = F.relu(F.conv2d(x, w0, b0))
    x = F.relu(F.conv2d(x, w1, b1))
    return F.conv2d(x, w2, b2)[0, 0]  # (h, w)


def plain_priors():
    """(N, 3) rows (x, y, stride) of the 128x128 canvas, level by level, row-major, written out by hand."""
    rows = []
    for level, (h, w) in enumerate(SIZES):
        s = 8.0 * 2**level
        rows += [(j * s, i * s, s) for i in range(h) for j in range(w)]
    return torch.tensor(rows)


def plain_to_original(logit, letterbox):
    canvas = F.interpolate(logit[None, None], scale_factor=8, mode="bilinear", align_corners=False)[0, 0]
    h0, w0 = letterbox.original_size
    new_w, new_h = round(w0 * letterbox.scale_x), round(h0 * letterbox.scale_y)
    crop = canvas[letterbox.pad_top : letterbox.pad_top + new_h, letterbox.pad_left : letterbox.pad_left + new_w]
    return F.interpolate(crop[None, None], size=(h0, w0), mode="bilinear", align_corners=False)[0, 0]


def calibrate_batchnorm(model, images):
    """Set every BN's running statistics to those of ``images`` (a random-init model in eval mode otherwise
    shrinks its features towards zero, layer by layer, since running var starts at 1)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass gives the batch statistics
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


@pytest.fixture(scope="module")
def lively_model():
    """course-sprites at random init, BN calibrated, with PyTorch's default conv init in the head (the
    reference's normal(0, 0.01) scores every prior about the same) and a cls bias of -2, so that varied
    instances and masks appear."""
    torch.manual_seed(0)
    model = build_model("course-sprites")
    with torch.no_grad():
        for module in model.head.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()
        for rtm_cls in model.head.rtm_cls:
            rtm_cls.bias.fill_(-2.0)
    images = torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8)
    return calibrate_batchnorm(model, normalize(images))


def test_model_masks_equal_a_per_instance_loop(lively_model):
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 90, 140), generator=g, dtype=torch.uint8)  # non-square
    canvas, letterbox = letterbox_image(image, (CANVAS, CANVAS))
    with torch.no_grad():
        outputs = lively_model(normalize(canvas[None]))
    (found,) = postprocess(outputs, [letterbox], InferenceConfig(max_per_img=20))
    assert len(found) == 20
    kernels = torch.cat([k[0].permute(1, 2, 0).reshape(-1, 169) for k in outputs.kernel_preds])
    differ = 0
    for n, mask in zip(found.prior_index.tolist(), found.masks, strict=True):
        logit = plain_mask_logits(outputs.mask_feats[0], kernels[n], plain_priors()[n])
        original = plain_to_original(logit, letterbox)
        assert mask.shape == (90, 140)
        sure = original.abs() > 1e-4  # pixels right at the threshold may flip with the summation order
        assert torch.equal(mask[sure], original[sure].sigmoid() > 0.5)
        differ += int((mask != (original.sigmoid() > 0.5)).sum())
    assert differ <= 5
    coverage = found.masks.float().mean((1, 2))
    assert ((coverage > 0.01) & (coverage < 0.9)).sum() >= 5  # real masks, so the comparison means something


def test_mask_logits_to_original_identity_when_nothing_moves():
    logits = torch.randn(3, 4, 6)
    box = Letterbox(1.0, 1.0, 0, 0, (32, 48), (32, 48))
    expected = F.interpolate(logits[None], scale_factor=8, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(mask_logits_to_original(logits, box), expected)


def test_mask_decoding_stages_and_pictures(lively_model):
    from matplotlib.figure import Figure

    from rtmdet_lesson.figures.instances import draw_instances, mask_decoding_stages, plot_mask_decoding_stages

    image = torch.randint(0, 256, (3, 100, 60), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    canvas, letterbox = letterbox_image(image, (CANVAS, CANVAS))
    with torch.no_grad():
        outputs = lively_model(normalize(canvas[None]))
    (found,) = postprocess(outputs, [letterbox], InferenceConfig(max_per_img=6))
    stages = mask_decoding_stages(outputs, found, k=2)
    assert stages["prototypes"].shape == (8, 16, 16) and stages["relative_coords"].shape == (2, 16, 16)
    assert stages["layer0"].shape == stages["layer1"].shape == (8, 16, 16) and (stages["layer0"] >= 0).all()
    assert stages["upsampled"].shape == (CANVAS, CANVAS) and stages["mask"].shape == (100, 60)
    n = int(found.prior_index[2])
    kernels = torch.cat([k[0].permute(1, 2, 0).reshape(-1, 169) for k in outputs.kernel_preds])
    expected = plain_mask_logits(outputs.mask_feats[0], kernels[n], plain_priors()[n])
    torch.testing.assert_close(torch.from_numpy(stages["logit"]), expected, atol=1e-5, rtol=1e-4)
    assert (torch.from_numpy(stages["mask"]) != found.masks[2]).sum() <= 2
    assert isinstance(plot_mask_decoding_stages(stages, image), Figure)
    assert isinstance(draw_instances(image, found, ["a", "b", "c", "d", "e"], score_thr=0.0), Figure)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_gather_priors_equals_indexing_the_concatenation():
    from rtmdet_lesson.postprocess import gather_priors

    maps = [torch.randn(5, 4, 6), torch.randn(5, 2, 3), torch.randn(5, 1, 2)]  # 24 + 6 + 2 priors
    concatenated = torch.cat([m.permute(1, 2, 0).reshape(-1, 5) for m in maps])  # (32, 5)
    index = torch.tensor([31, 0, 24, 23, 29, 5, 30])
    assert torch.equal(gather_priors(maps, index), concatenated[index])
    assert gather_priors(maps, index[:0]).shape == (0, 5)
