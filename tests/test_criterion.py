"""compute_losses against a plain per-image re-statement, its edge cases, its errors, and the model end to end."""

import pytest
import torch
import torch.nn.functional as F

from rtmdet_lesson.assigner import DynamicSoftLabelAssigner, center_of_mass
from rtmdet_lesson.boxes import aligned_giou, box_iou
from rtmdet_lesson.criterion import compute_losses, flatten_levels, upsample_x2
from rtmdet_lesson.dynamic_mask import dynamic_mask_logits
from rtmdet_lesson.fast.losses import FAST_MASK_LOSS
from rtmdet_lesson.fast.losses import upsample_x2 as fast_upsample_x2
from rtmdet_lesson.head import HeadOutput
from rtmdet_lesson.priors import grid_priors

SIZE = (64, 96)  # (H, W), non-square on purpose
C = 3


def make_outputs(batch, seed=0, with_mask=True):
    gen = torch.Generator().manual_seed(seed)
    h, w = SIZE
    levels = [(h // s, w // s, s) for s in (8, 16, 32)]
    cls = [(torch.randn(batch, C, lh, lw, generator=gen) - 2).requires_grad_() for lh, lw, _ in levels]
    box = [(s * (1 + 2 * torch.rand(batch, 4, lh, lw, generator=gen))).requires_grad_() for lh, lw, s in levels]
    if not with_mask:
        return HeadOutput(cls, box)
    kernels = [(0.3 * torch.randn(batch, 169, lh, lw, generator=gen)).requires_grad_() for lh, lw, _ in levels]
    feats = torch.randn(batch, 8, h // 8, w // 8, generator=gen).requires_grad_()
    return HeadOutput(cls, box, kernels, feats)


def make_target(boxes, labels):
    h, w = SIZE
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[j, y1:y2, x1:x2] = True
        masks[j, y1:y1 + (y2 - y1) // 3, x1:x1 + (x2 - x1) // 3] = False  # not a plain rectangle
    return dict(boxes=boxes, labels=torch.tensor(labels, dtype=torch.int64), masks=masks)


def plain_losses(outputs, targets):
    """Per image, per positive, with full one-hot soft targets: the straightforward form of RTMDetHead.loss_by_feat."""
    h, w = SIZE
    sizes = [tuple(m.shape[-2:]) for m in outputs.cls_scores]
    priors = grid_priors(sizes, (8, 16, 32))
    cls, dist = flatten_levels(outputs.cls_scores), flatten_levels(outputs.bbox_preds)
    kernels = flatten_levels(outputs.kernel_preds)
    boxes = torch.cat([priors[:, :2] - dist[..., :2], priors[:, :2] + dist[..., 2:]], -1)
    qfl, giou, dice, iou_sum, num_pos = 0.0, 0.0, 0.0, 0.0, 0
    for b, t in enumerate(targets):
        g = len(t["boxes"])
        valid = torch.ones(1, g, dtype=torch.bool)
        r = DynamicSoftLabelAssigner()(
            cls[b : b + 1].detach(), boxes[b : b + 1].detach(), priors, t["boxes"][None], t["labels"][None], valid,
            center_of_mass(t["masks"])[None],
        )
        soft = torch.zeros(cls.shape[1], C)
        for i in r.pos_mask[0].nonzero()[:, 0].tolist():
            j = int(r.gt_index[0, i])
            iou = box_iou(boxes[b, i : i + 1].detach(), t["boxes"][j : j + 1])[0, 0]
            assert torch.isclose(iou, r.soft_targets[0, i])
            soft[i, t["labels"][j]] = iou
            giou = giou + iou * (1 - aligned_giou(boxes[b, i], t["boxes"][j]))
            iou_sum += float(iou)
            logit = dynamic_mask_logits(outputs.mask_feats[b : b + 1], kernels[b, i : i + 1], priors[i : i + 1],
                                        torch.zeros(1, dtype=torch.int64))
            logit = F.interpolate(logit[None], size=(h // 4, w // 4), mode="bilinear", align_corners=False)[0, 0]
            p = logit.sigmoid()
            gt = t["masks"][j, 2::4, 2::4].float()
            dice = dice + 1 - 2 * (p * gt).sum() / ((p * p).sum() + 5e-6 + (gt * gt).sum() + 5e-6)
            num_pos += 1
        x = cls[b]
        qfl = qfl + (F.binary_cross_entropy_with_logits(x, soft, reduction="none") * (soft - x.sigmoid()) ** 2).sum()
    norm = max(iou_sum, 1.0)
    return dict(loss_cls=qfl / norm, loss_bbox=2 * giou / norm, loss_mask=2 * dice / max(num_pos, 1), num_pos=num_pos)


def test_matches_plain_per_image_losses():
    outputs = make_outputs(2)
    targets = [make_target([[8, 8, 40, 56], [30, 4, 90, 40]], [0, 2]), make_target([[50, 20, 80, 60]], [1])]
    losses = compute_losses(outputs, targets, SIZE)
    expected = plain_losses(outputs, targets)
    assert losses["num_pos"] == expected["num_pos"] > 0
    for key in ("loss_cls", "loss_bbox", "loss_mask"):
        torch.testing.assert_close(losses[key], expected[key], rtol=1e-4, atol=1e-5)


def test_zero_objects_give_zero_box_and_mask_losses_that_still_backpropagate():
    outputs = make_outputs(2)
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                 masks=torch.zeros(0, *SIZE, dtype=torch.bool))
    losses = compute_losses(outputs, [empty, empty], SIZE)
    assert losses["num_pos"] == 0
    assert losses["loss_bbox"].item() == 0 and losses["loss_mask"].item() == 0 and losses["loss_cls"].item() > 0
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    for t in outputs.cls_scores + outputs.bbox_preds + outputs.kernel_preds + [outputs.mask_feats]:
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert outputs.cls_scores[0].grad.abs().sum() > 0


def test_object_between_prior_points_only_pushes_scores_down():
    outputs = make_outputs(1)
    tiny = make_target([[33, 33, 39, 39]], [1])  # no stride-8 point strictly inside
    losses = compute_losses(outputs, [tiny], SIZE)
    assert losses["num_pos"] == 0 and losses["loss_bbox"].item() == 0
    losses["loss_cls"].backward()
    assert torch.isfinite(outputs.cls_scores[0].grad).all()


def test_mixed_batch_one_empty_image():
    outputs = make_outputs(2, seed=3)
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                 masks=torch.zeros(0, *SIZE, dtype=torch.bool))
    targets = [empty, make_target([[10, 10, 60, 50]], [2])]
    losses = compute_losses(outputs, targets, SIZE)
    expected = plain_losses(outputs, targets)
    assert losses["num_pos"] == expected["num_pos"] > 0
    torch.testing.assert_close(losses["loss_mask"], expected["loss_mask"], rtol=1e-4, atol=1e-5)
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    assert all(torch.isfinite(k.grad).all() for k in outputs.kernel_preds)


def test_detection_outputs_use_box_centres_and_have_no_mask_loss():
    outputs = make_outputs(1, with_mask=False)
    target = make_target([[8, 8, 40, 56]], [0])
    del target["masks"]
    losses = compute_losses(outputs, [target], SIZE)
    assert set(losses) == {"loss_cls", "loss_bbox", "num_pos"} and losses["num_pos"] > 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.update(labels=t["labels"].int()), "labels.long()"),
        (lambda t: t.update(labels=t["labels"] + 5), "contiguous labels"),
        (lambda t: t.update(boxes=t["boxes"].long()), "boxes.float()"),
        (lambda t: t.update(boxes=t["boxes"][:, :3]), "x1y1x2y2"),
        (lambda t: t.update(masks=t["masks"][:, :32]), "pad the masks"),
        (lambda t: t.update(masks=t["masks"].float()), "masks.bool()"),
        (lambda t: t.pop("masks"), "masks"),
    ],
)
def test_bad_targets_raise_with_the_fix(change, message):
    target = make_target([[8, 8, 40, 56]], [0])
    change(target)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compute_losses(make_outputs(1), [target], SIZE)


def test_wrong_number_of_targets_or_image_size():
    target = make_target([[8, 8, 40, 56]], [0])
    with pytest.raises(ValueError, match="one dict per image"):
        compute_losses(make_outputs(2), [target], SIZE)
    with pytest.raises(ValueError, match="do not divide image_size"):
        compute_losses(make_outputs(1), [target], (64, 64))


@pytest.mark.parametrize("preset, num_classes", [("course-sprites", 5), ("rtmdet-ins-tiny", 80)])
def test_model_loss_end_to_end(preset, num_classes):
    from rtmdet_lesson.presets import build_model

    torch.manual_seed(0)
    model = build_model(preset, num_classes=num_classes)
    x = torch.randn(2, 3, *SIZE)
    targets = [make_target([[8, 8, 40, 56], [40, 16, 88, 60]], [0, 3]), make_target([[20, 4, 70, 40]], [4])]
    losses = model.loss(x, targets)
    assert losses["num_pos"] > 0
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert all(torch.isfinite(losses[k]) for k in ("loss_cls", "loss_bbox", "loss_mask"))
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("upsample_x2", [upsample_x2, fast_upsample_x2], ids=["plain", "fast"])
@pytest.mark.parametrize("shape", [(5, 40, 40), (3, 24, 40), (1, 1, 7)])
def test_upsample_x2_is_bilinear_interpolation(shape, upsample_x2):
    """The mask loss's x2 (and the fast one's two matrix products) equals F.interpolate (align_corners False),
    values and gradients."""
    logits = torch.randn(shape, requires_grad=True)
    expected = F.interpolate(logits[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    got = upsample_x2(logits)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    weights = torch.randn(expected.shape)
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), logits)
    (grad_got,) = torch.autograd.grad((got * weights).sum(), logits)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-5, atol=1e-5)
    assert upsample_x2(torch.zeros(0, 8, 6)).shape == (0, 16, 12)  # no positives (F.interpolate refuses these)


def test_the_fast_mask_loss_steps_give_the_plain_losses_and_gradients():
    """compute_losses with rtmdet_lesson.fast.losses' steps (chunked dynamic head, matrix x2, floored Dice with
    its hand gradient) against the plain steps, on a batch whose mask logits reach below the floor."""
    from rtmdet_lesson.presets import build_model

    torch.manual_seed(0)
    model = build_model("course-sprites", num_classes=3).train()
    x = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[0, 8:40, 10:50] = True
    mask[1, 30:60, 40:90] = True
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0], [40.0, 30.0, 90.0, 60.0]]),
                "labels": torch.tensor([0, 2]), "masks": mask}] * 2
    out = model(x)
    grads = []
    for steps in (None, FAST_MASK_LOSS):
        kwargs = {} if steps is None else {"mask_steps": steps}
        losses = compute_losses(out, targets, (64, 96), **kwargs)
        grads.append((losses, torch.autograd.grad(losses["loss_mask"], out.kernel_preds + [out.mask_feats])))
    (plain, plain_grads), (fast, fast_grads) = grads
    for name in ("loss_cls", "loss_bbox", "loss_mask"):
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-5, atol=1e-7)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
