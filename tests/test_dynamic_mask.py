"""The dynamic mask head (chapter 08) and its chunked rewrite (chapter 09) against a per-instance loop of three
F.conv2d calls."""

import pytest
import torch
import torch.nn.functional as F

from rtmdet_lesson.dynamic_mask import NUM_DYNAMIC_PARAMS, dynamic_mask_logits, split_dynamic_params
from rtmdet_lesson.fast.dynamic_mask import dynamic_mask_logits as chunked_mask_logits


def _loop_reference(mask_feats, kernels, priors, image_index):
    """Plain reference: one instance at a time, slicing the 169 numbers by hand."""
    _, _, h, w = mask_feats.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=mask_feats.dtype) * 8, torch.arange(w, dtype=mask_feats.dtype) * 8, indexing="ij"
    )
    out = []
    for k in range(kernels.shape[0]):
        px, py, s = priors[k, 0], priors[k, 1], priors[k, 2]
        coords = torch.stack([(px - xs) / (s * 8), (py - ys) / (s * 8)])  # (2, h, w)
        x = torch.cat([coords, mask_feats[image_index[k]]])[None]  # (1, 10, h, w)
        p = kernels[k]
        w0, w1, w2 = p[:80].view(8, 10, 1, 1), p[80:144].view(8, 8, 1, 1), p[144:152].view(1, 8, 1, 1)
        b0, b1, b2 = p[152:160], p[160:168], p[168:169]
        x = F.relu(F.conv2d(x, w0, b0))
        x = F.relu(F.conv2d(x, w1, b1))
        out.append(F.conv2d(x, w2, b2)[0, 0])
    return torch.stack(out)


def _inputs(k=5, b=2, h=6, w=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    mask_feats = torch.randn(b, 8, h, w, generator=g, dtype=dtype)
    kernels = torch.randn(k, NUM_DYNAMIC_PARAMS, generator=g, dtype=dtype)
    strides = torch.tensor([8.0, 16.0, 32.0], dtype=dtype)[torch.randint(0, 3, (k,), generator=g)]
    xy = torch.randint(0, 6, (k, 2), generator=g).to(dtype) * strides[:, None]
    priors = torch.cat([xy, strides[:, None], strides[:, None]], dim=1)
    image_index = torch.randint(0, b, (k,), generator=g)
    return mask_feats, kernels, priors, image_index


def test_169_is_three_1x1_convs():
    assert NUM_DYNAMIC_PARAMS == (10 * 8 + 8) + (8 * 8 + 8) + (8 * 1 + 1) == 169


def test_split_layout_weights_first_then_biases():
    kernels = torch.arange(169.0)[None].repeat(2, 1)
    weights, biases = split_dynamic_params(kernels)
    assert [tuple(t.shape) for t in weights] == [(2, 8, 10), (2, 8, 8), (2, 1, 8)]
    assert [tuple(t.shape) for t in biases] == [(2, 8), (2, 8), (2, 1)]
    assert weights[0][0, 0, :3].tolist() == [0, 1, 2]  # out 0, in 0..2
    assert weights[0][0, 1, 0].item() == 10  # out 1 starts after 10 inputs
    assert weights[1][0, 0, 0].item() == 80 and weights[2][0, 0, 0].item() == 144
    assert biases[0][0].tolist() == list(range(152, 160))
    assert biases[2][0].tolist() == [168]


def test_split_rejects_wrong_width():
    with pytest.raises(ValueError, match="169"):
        split_dynamic_params(torch.zeros(3, 160))


def test_matches_per_instance_loop():
    mask_feats, kernels, priors, image_index = _inputs()
    got = dynamic_mask_logits(mask_feats, kernels, priors, image_index)
    assert got.shape == (5, 6, 7)
    torch.testing.assert_close(got, _loop_reference(mask_feats, kernels, priors, image_index))


def test_float64_stays_float64():
    mask_feats, kernels, priors, image_index = _inputs(dtype=torch.float64)
    got = dynamic_mask_logits(mask_feats, kernels, priors, image_index)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _loop_reference(mask_feats, kernels, priors, image_index))


def test_zero_instances():
    mask_feats, _, _, _ = _inputs()
    got = dynamic_mask_logits(mask_feats, torch.zeros(0, 169), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert got.shape == (0, 6, 7)


def test_gradients_reach_kernels_and_prototypes():
    mask_feats, kernels, priors, image_index = _inputs()
    mask_feats.requires_grad_(True)
    kernels.requires_grad_(True)
    dynamic_mask_logits(mask_feats, kernels, priors, image_index).sum().backward()
    assert mask_feats.grad.abs().sum() > 0 and kernels.grad.abs().sum() > 0


def test_chunked_training_graph_modifies_no_view_in_place():
    """An in-place op on a view makes autograd rebase the view (a ``CopySlices`` node, which copies the whole
    activation in the backward); the chunked head's ReLUs must act on whole tensors."""
    mask_feats, kernels, priors, image_index = _inputs(k=12)
    kernels.requires_grad_(True)
    nodes, stack = set(), [chunked_mask_logits(mask_feats, kernels, priors, image_index).grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            stack += [parent for parent, _ in node.next_functions]
    names = {type(node).__name__ for node in nodes}
    assert "ReluBackward0" in names  # the walk reached the layers
    assert "CopySlices" not in names


def test_mismatched_instances_rejected():
    mask_feats, kernels, priors, image_index = _inputs()
    with pytest.raises(ValueError, match="same K instances"):
        dynamic_mask_logits(mask_feats, kernels, priors[:3], image_index)


@pytest.mark.parametrize("sort", [False, True])
def test_chunks_and_order_give_the_loops_values_and_gradients(monkeypatch, sort):
    """Chunks of 3 instances (forced) over 3 images; instances in random or sorted image order, one image empty."""
    import rtmdet_lesson.fast.dynamic_mask as dm

    monkeypatch.setattr(dm, "CHUNK_FLOATS", 3 * 8 * 6 * 7)
    mask_feats, kernels, priors, _ = _inputs(k=11, b=4)
    image_index = torch.tensor([2, 0, 3, 0, 3, 3, 0, 3, 2, 0, 3])  # image 1 has none
    if sort:
        image_index = image_index.sort().values
    got_leaves = [mask_feats.clone().requires_grad_(), kernels.clone().requires_grad_()]
    ref_leaves = [mask_feats.clone().requires_grad_(), kernels.clone().requires_grad_()]
    got = chunked_mask_logits(got_leaves[0], got_leaves[1], priors, image_index)
    ref = _loop_reference(ref_leaves[0], ref_leaves[1], priors, image_index)
    torch.testing.assert_close(got, ref)
    upstream = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    got.backward(upstream)
    ref.backward(upstream)
    for a, b in zip(got_leaves, ref_leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("k", [0, 1, 40])
def test_chunked_head_equals_the_plain_one(k):
    mask_feats, kernels, priors, image_index = _inputs(k=k, b=3, h=12, w=10)
    torch.testing.assert_close(chunked_mask_logits(mask_feats, kernels, priors, image_index),
                               dynamic_mask_logits(mask_feats, kernels, priors, image_index))
    with pytest.raises(ValueError, match="same K instances"):
        chunked_mask_logits(mask_feats, kernels, priors[:, :3], image_index)
