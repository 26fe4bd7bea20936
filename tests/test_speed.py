"""rtmdet_lesson.fast: the inference fast path gives the plain model's answers; the training rewrites keep the
computation (chapter 09)."""

import copy
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from torch import nn

from rtmdet_lesson import build_model
from rtmdet_lesson.blocks import ChannelAttention, ConvBNAct, CSPLayer, SPPBottleneck
from rtmdet_lesson.checkpoint import load_checkpoint_model
from rtmdet_lesson.criterion import compute_losses
from rtmdet_lesson.data.sprites import render_sample
from rtmdet_lesson.fast import (
    SPEEDS,
    InferenceModel,
    SpeedOptions,
    fold_batchnorm,
    fold_conv_bn,
    optimize_for_inference,
    prepare_for_training,
)
from rtmdet_lesson.fast.cls_tower import use_one_cls_pass
from rtmdet_lesson.fast.training import (
    CHANNELS_LAST_BLOCKS,
    DepthwiseConvFp32,
    ToChannelsLast,
    cat_channels,
)
from rtmdet_lesson.head import MaskFeatModule
from rtmdet_lesson.neck import CSPNeXtPAFPN


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def one_object_targets() -> list[dict]:
    """Two 64x64 images with one object each (rows 4-29 of the mask on), as the criterion takes them."""
    mask = torch.zeros(1, 64, 64, dtype=torch.bool).index_fill_(1, torch.arange(4, 30), True)
    return [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1]), "masks": mask}] * 2


def flat_outputs(out) -> list[torch.Tensor]:
    extra = (out.kernel_preds or []) + ([out.mask_feats] if out.mask_feats is not None else [])
    return out.cls_scores + out.bbox_preds + extra


def max_relative_error(a, b) -> float:
    pairs = zip(flat_outputs(a), flat_outputs(b), strict=True)
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in pairs)


def test_fold_conv_bn_matches_hand_formula():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    conv.weight.data.fill_(2.0)
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    bn.weight.data.fill_(3.0)
    bn.bias.data.fill_(0.5)
    fused = fold_conv_bn(conv, bn)
    # bn(conv(x)) = 3 * (2x - 1) / 2 + 0.5 = 3x - 1
    assert fused.weight.item() == pytest.approx(3.0)
    assert fused.bias.item() == pytest.approx(-1.0)


@pytest.mark.parametrize("groups, bias, stride", [(1, False, 1), (8, False, 2), (1, True, 1)])
def test_fold_conv_bn_equals_conv_then_bn(groups, bias, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16 if groups == 1 else 8, 3, stride, 1, groups=groups, bias=bias)
    bn = randomise_batchnorm(nn.BatchNorm2d(conv.out_channels))
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_needs_eval_mode():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(build_model("course-sprites").train())


def test_fold_batchnorm_leaves_no_batchnorm():
    model = fold_batchnorm(build_model("course-sprites").eval())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("preset", ["course-sprites", "course-sprites-det"])
@pytest.mark.parametrize("speed", ["exact", SpeedOptions(fold_bn=True), SpeedOptions(single_cls_pass=True),
                                   SpeedOptions(channels_last=True)], ids=["exact", "fold", "single", "cl"])
def test_exact_speedups_equal_the_plain_eval_outputs(preset, speed):
    """Fast path's raw outputs == plain eval within 1e-4 relative, in fp32, one image and a non-square batch."""
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(preset))
    fast = optimize_for_inference(model, speed)
    with torch.inference_mode():
        for x in (torch.randn(1, 3, 128, 128), torch.randn(2, 3, 96, 160)):
            assert max_relative_error(fast(x), model(x)) < 1e-4


def test_single_cls_pass_is_bit_identical_in_eval():
    model = randomise_batchnorm(build_model("course-sprites"))
    once = optimize_for_inference(model, SpeedOptions(single_cls_pass=True))
    assert once.network.head.single_cls_pass and not getattr(model.head, "single_cls_pass", False)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        for a, b in zip(flat_outputs(once(x)), flat_outputs(model(x)), strict=True):
            assert torch.equal(a, b)


def test_single_cls_pass_in_training_keeps_outputs_gradients_and_batchnorm_statistics():
    """One pass of the cls tower in training = the reference's two: the same batch statistics give the same
    features, the gradient is summed over both uses, and the BNs still get two running-statistic updates."""
    torch.manual_seed(0)
    twice = build_model("course-sprites", num_classes=5).train()
    once = build_model("course-sprites", num_classes=5).train()
    once.load_state_dict(twice.state_dict())
    use_one_cls_pass(once.head)
    x = torch.randn(2, 3, 64, 96)  # non-square
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1]),
                "masks": torch.zeros(1, 64, 96, dtype=torch.bool).index_fill_(1, torch.arange(4, 30), True)}] * 2
    losses = [compute_losses(m(x), targets, (64, 96)) for m in (twice, once)]
    for name in ("loss_cls", "loss_bbox", "loss_mask"):
        assert torch.equal(losses[1][name], losses[0][name]), name
        # (the same features, so even the losses are bit-identical)
    for loss in losses:
        (loss["loss_cls"] + loss["loss_bbox"] + loss["loss_mask"]).backward()
    for (name, a), b in zip(twice.named_parameters(), once.parameters(), strict=True):
        if a.grad is not None:
            assert float((b.grad - a.grad).abs().max() / a.grad.abs().max().clamp(min=1e-12)) < 1e-4, name
    tower = twice.head.cls_tower.norms[0][0]
    assert int(tower.num_batches_tracked) == 2  # the reference updates the cls tower's BNs twice
    for key, value in twice.state_dict().items():  # running means, variances and counts: bit-identical
        assert torch.equal(once.state_dict()[key], value), key


def test_a_folded_tower_takes_the_single_pass_call():
    model = randomise_batchnorm(build_model("course-sprites"))
    fast = optimize_for_inference(model, "exact")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert max_relative_error(fast(x), model(x)) < 1e-4


def test_optimize_for_inference_leaves_the_model_alone():
    model = build_model("course-sprites").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model, "fast")
    assert model.training and isinstance(model.backbone.stem[0].bn, nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(fast, InferenceModel) and not fast.training
    assert fast.input_size == model.input_size and fast.num_classes == model.num_classes


def test_outputs_come_back_fp32_and_contiguous():
    fast = optimize_for_inference(build_model("course-sprites").eval(), "fast")
    with torch.inference_mode():
        out = fast(torch.randn(1, 3, 64, 64))
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in flat_outputs(out))


def test_inference_model_refuses_training():
    fast = optimize_for_inference(build_model("course-sprites").eval())
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_unknown_speed_names_the_choices():
    with pytest.raises(ValueError, match="plain, exact, fast, compile"):
        optimize_for_inference(build_model("course-sprites"), "turbo")
    assert list(SPEEDS) == ["plain", "exact", "fast", "compile"]


def test_inference_model_rejects_bad_input_like_the_model():
    fast = optimize_for_inference(build_model("course-sprites").eval())
    with pytest.raises(ValueError, match="multiple of 32"):
        fast(torch.randn(1, 3, 100, 100))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_predict_through_the_fast_path_finds_the_same_instances(index):
    """The shipped model on sprites val images, eval settings: same instances, boxes, scores and masks."""
    model = load_checkpoint_model(REPO_ROOT / "data" / "course-sprites.pth", device="cpu")
    image = render_sample(seed=0, split="val", index=index).image
    plain = model.predict(image)[0]
    fast = optimize_for_inference(model, "exact").predict(image)[0]
    assert len(plain) == len(fast) > 0
    # order by (prior, class): candidates with equal scores may swap places under float rounding
    i = torch.argsort(plain.prior_index * model.num_classes + plain.labels)
    j = torch.argsort(fast.prior_index * model.num_classes + fast.labels)
    assert torch.equal(fast.prior_index[j], plain.prior_index[i]) and torch.equal(fast.labels[j], plain.labels[i])
    torch.testing.assert_close(fast.scores[j], plain.scores[i], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast.boxes[j], plain.boxes[i], rtol=1e-4, atol=1e-3)
    assert (fast.masks[j] != plain.masks[i]).float().mean() < 1e-4  # only pixels with a logit at the threshold


def test_prepare_for_training_keeps_keys_and_the_fp32_computation():
    torch.manual_seed(0)
    plain = build_model("course-sprites", num_classes=5).train()
    prepared = build_model("course-sprites", num_classes=5).train()
    prepared.load_state_dict(plain.state_dict())
    prepare_for_training(prepared, channels_last=True, amp_dtype=None)
    assert list(prepared.state_dict()) == list(plain.state_dict())
    assert prepared.neck.out_convs[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    stem = prepared.backbone.stem  # NCHW up to the stem's last conv
    assert stem[0].conv.weight.is_contiguous() and stem[1].conv.weight.is_contiguous()
    assert stem[2].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert type(prepared.neck).__name__ == "ChannelsLastPAFPN" and type(plain.neck).__name__ == "CSPNeXtPAFPN"
    x = torch.randn(2, 3, 64, 64)
    targets = one_object_targets()
    losses = [plain.loss(x, targets), prepared.loss(x, targets)]  # prepared: the fast mask loss's steps as well
    for name in ("loss_cls", "loss_bbox", "loss_mask"):
        torch.testing.assert_close(losses[1][name], losses[0][name], rtol=1e-4, atol=1e-6)
    for loss in losses:
        (loss["loss_cls"] + loss["loss_bbox"] + loss["loss_mask"]).backward()
    for (name, a), b in zip(plain.named_parameters(), prepared.parameters(), strict=True):
        assert float((b.grad - a.grad).norm() / a.grad.norm().clamp(min=1e-12)) < 1e-3, name


def test_the_layout_switch_hands_back_an_nchw_gradient():
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    y = ToChannelsLast.apply(x)
    assert torch.equal(y, x) and y.is_contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(2, 4, 6, 5).contiguous(memory_format=torch.channels_last)
    y.backward(upstream)
    assert torch.equal(x.grad, upstream) and x.grad.is_contiguous()  # the NCHW stem gets an NCHW gradient


def test_prepare_for_training_keeps_depthwise_convs_fp32_under_cpu_bf16():
    model = prepare_for_training(build_model("course-sprites").train(), channels_last=False, amp_dtype=torch.bfloat16)
    convs = [m.conv for m in model.modules() if isinstance(m, ConvBNAct)]
    assert any(isinstance(c, DepthwiseConvFp32) for c in convs)
    assert all(isinstance(c, DepthwiseConvFp32) == (c.groups > 1) for c in convs)
    x = torch.randn(2, 16, 8, 8)
    conv = next(c for c in convs if isinstance(c, DepthwiseConvFp32) and c.in_channels == 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.float32


def test_a_training_step_runs_under_cpu_bf16_autocast_with_the_fast_settings():
    torch.manual_seed(0)
    model = prepare_for_training(build_model("course-sprites", num_classes=5).train(), True, torch.bfloat16)
    x = torch.randn(2, 3, 64, 64)
    targets = one_object_targets()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.loss(x, targets)
    total = losses["loss_cls"] + losses["loss_bbox"] + losses["loss_mask"]
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


FREE_AND_REALLOCATE = """
import resource, sys, torch
from rtmdet_lesson.fast import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported")
    sys.exit()
def step():  # a training step's worth of activations: sixteen 4 MiB blocks, allocated, filled and freed
    blocks = [torch.ones(2**20 + 1000 * i) for i in range(16)]
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts of glibc's malloc")
def test_keep_freed_memory_reuses_freed_blocks_instead_of_faulting_new_pages():
    def faults_per_step(mode: str) -> str:
        run = subprocess.run([sys.executable, "-c", FREE_AND_REALLOCATE, mode], capture_output=True, text=True,
                             cwd=REPO_ROOT, check=True)
        return run.stdout.strip()

    kept = faults_per_step("keep")
    if kept == "unsupported":
        pytest.skip("the C library is not glibc")
    pages = 16 * 4 * 2**20 // 4096  # 16,384 pages a step
    assert int(faults_per_step("default")) > pages // 2  # glibc unmaps the blocks and faults them in again
    assert int(kept) < pages // 8  # kept in the heap and reused


@pytest.mark.skipif(not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")),
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_compile_gives_the_same_outputs():
    """The opt-in ``compile`` piece (here in fp32, so the comparison can be strict); compiling takes ~35 s."""
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model("course-sprites"))
    compiled = optimize_for_inference(model, SpeedOptions(fold_bn=True, single_cls_pass=True, compile=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert max_relative_error(compiled(x), model(x)) < 1e-4


def test_cat_channels_is_torch_cat_with_contiguous_channels_last_gradients():
    torch.manual_seed(0)
    parts = [torch.randn(2, c, 5, 7).contiguous(memory_format=torch.channels_last) for c in (3, 5, 2)]
    leaves = [p.clone().requires_grad_() for p in parts]
    out = cat_channels(leaves)
    torch.testing.assert_close(out, torch.cat(parts, dim=1), rtol=0, atol=0)
    upstream = torch.randn(2, 10, 5, 7).contiguous(memory_format=torch.channels_last)
    out.backward(upstream)
    for leaf, grad in zip(leaves, upstream.split([3, 5, 2], dim=1), strict=True):
        torch.testing.assert_close(leaf.grad, grad, rtol=0, atol=0)
        assert leaf.grad.is_contiguous(memory_format=torch.channels_last)  # a copy, not a strided slice


def test_cat_channels_leaves_nchw_gradients_and_no_grad_calls_alone():
    a, b = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 1, 4, 4, requires_grad=True)
    upstream = torch.randn(2, 4, 4, 4)
    cat_channels([a, b]).backward(upstream)
    torch.testing.assert_close(b.grad, upstream[:, 3:], rtol=0, atol=0)
    with torch.no_grad():
        assert cat_channels([a, b]).grad_fn is None


def test_channel_attention_gradient_equals_autograds_and_keeps_channels_last():
    torch.manual_seed(0)
    attention = ChannelAttention(6)
    attention.__class__ = CHANNELS_LAST_BLOCKS[ChannelAttention]
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    upstream = torch.randn(2, 6, 5, 7)
    attention(x).backward(upstream)
    reference = x.detach().clone().requires_grad_()
    pooled = reference.mean(dim=(2, 3), keepdim=True)  # the textbook pool, autograd's own backward
    (reference * attention.act(attention.fc(pooled))).backward(upstream)
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-6, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attention(x.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_())
    assert y.dtype == torch.bfloat16


def test_channels_last_blocks_equal_the_lesson_blocks_in_training():
    """Each swapped block (torch.cat -> cat_channels, the mean -> PixelMean) gives the lesson block's outputs and
    gradients, in channels-last memory."""
    torch.manual_seed(0)
    blocks = [CSPLayer(8, 8, 1, channel_attention=True), SPPBottleneck(8, 8), CSPNeXtPAFPN((8, 16, 32), 8, 1),
              MaskFeatModule(8, 8, stacked_convs=1)]
    for plain in blocks:
        fast = copy.deepcopy(plain)
        for module in fast.modules():
            if type(module) in CHANNELS_LAST_BLOCKS:
                module.__class__ = CHANNELS_LAST_BLOCKS[type(module)]
        plain.train().to(memory_format=torch.channels_last)
        fast.train().to(memory_format=torch.channels_last)
        sizes = {CSPNeXtPAFPN: [(8, 16, 16), (16, 8, 8), (32, 4, 4)],
                 MaskFeatModule: [(8, 16, 16), (8, 8, 8), (8, 4, 4)]}.get(type(plain), [(8, 16, 16)])
        inputs = [torch.randn(2, *size).contiguous(memory_format=torch.channels_last) for size in sizes]
        results = []
        for module in (plain, fast):
            leaves = [t.clone().requires_grad_() for t in inputs]
            out = module(leaves if len(leaves) > 1 else leaves[0])
            outs = out if isinstance(out, list) else [out]
            sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
            results.append((outs, [leaf.grad for leaf in leaves]))
        for a, b in zip(results[1][0] + results[1][1], results[0][0] + results[0][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_fast_mask_decoder_gives_chapter_08s_masks():
    from rtmdet_lesson.fast.mask_resize import decode_masks as fast_decode_masks
    from rtmdet_lesson.postprocess import decode_masks
    from rtmdet_lesson.preprocess import letterbox_geometry

    g = torch.Generator().manual_seed(0)
    mask_feats = torch.randn(1, 8, 12, 16, generator=g)
    kernels = torch.randn(30, 169, generator=g) * 0.5
    priors = torch.tensor([[40.0, 32.0, 8.0, 8.0]]).repeat(30, 1) + torch.randint(0, 8, (30, 1), generator=g) * 8
    letterbox = letterbox_geometry((70, 100), (96, 128))
    fast, plain = (fn(mask_feats, kernels, priors, letterbox, 0.5, 8) for fn in (fast_decode_masks, decode_masks))
    assert fast.shape == plain.shape == (30, 70, 100)
    assert (fast != plain).float().mean() < 1e-4  # only pixels with a logit at the threshold may differ
