"""Prior points and relative coordinate maps (chapter 04).

RTMDet is anchor-free: every cell of every output map is one *prior point*. At stride ``s`` the cell in
row ``i`` and column ``j`` owns the point ``(j * s, i * s)``: offset 0, the top-left corner of the cell, as
the reference configs set it (the class default of 0.5 is *not* used). A 640x640 input gives
80*80 + 40*40 + 20*20 = 8400 priors.

The dynamic mask head needs, for each kept instance, where every stride-8 mask pixel lies relative to the
instance's own prior point: ``relative_coordinates`` builds those two maps (x first, then y).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def grid_priors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int] = (8, 16, 32),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """All prior points of a feature pyramid, as the heads' outputs are flattened. Chapter 04 builds this.

    Args:
        feature_sizes: ``(h, w)`` of each level's map, in stride order, e.g. ``[(80, 80), (40, 40), (20, 20)]``.
        strides: the stride of each level.
        device, dtype: where and how to make the priors.

    Returns:
        ``(N, 4)`` with columns ``(x, y, stride_w, stride_h)``; each level row-major (y outer, x inner),
        levels concatenated in stride order, ``N = sum(h * w)``.
    """
    if len(feature_sizes) != len(strides):
        raise ValueError(
            f"got {len(feature_sizes)} feature sizes but {len(strides)} strides; pass one (h, w) per stride"
        )
    levels = []
    for (h, w), stride in zip(feature_sizes, strides, strict=True):
        xs = torch.arange(w, device=device, dtype=dtype) * stride  # (w,)
        ys = torch.arange(h, device=device, dtype=dtype) * stride  # (h,)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
        s = torch.full_like(grid_x, stride)  # (h, w)
        levels.append(torch.stack([grid_x, grid_y, s, s], dim=-1).reshape(h * w, 4))  # (h*w, 4)
    return torch.cat(levels)  # (N, 4)


def relative_coordinates(
    prior_xy: torch.Tensor,
    prior_stride: torch.Tensor,
    mask_size: tuple[int, int],
    mask_stride: int = 8,
) -> torch.Tensor:
    """Coordinate maps of each instance relative to its prior point. Chapter 04 builds this.

    The mask-feature grid has points ``(j * 8, i * 8)`` (offset 0, stride 8). For an instance whose prior is
    ``p`` on a level with stride ``s`` the maps are ``(p - grid) / (s * 8)``: note the sign (prior minus grid)
    and the normaliser (64, 128 or 256 px), both as in the reference.

    Args:
        prior_xy: ``(K, 2)`` prior points ``(x, y)`` in pixels.
        prior_stride: ``(K,)`` stride of the level that predicted each instance.
        mask_size: ``(h, w)`` of the mask-feature map.
        mask_stride: stride of that map (8).

    Returns:
        ``(K, 2, h, w)``, channel 0 the relative x, channel 1 the relative y; on the device and in the
        dtype of ``prior_xy``.
    """
    if prior_xy.ndim != 2 or prior_xy.shape[-1] != 2:
        raise ValueError(f"prior_xy must be (K, 2) points (x, y), got shape {tuple(prior_xy.shape)}")
    h, w = mask_size
    grid = grid_priors([(h, w)], [mask_stride], device=prior_xy.device, dtype=prior_xy.dtype)[:, :2]  # (h*w, 2)
    rel = prior_xy[:, None, :] - grid[None]  # (K, h*w, 2)
    rel = rel / (prior_stride.to(prior_xy.dtype)[:, None, None] * 8)  # (K, h*w, 2)
    return rel.permute(0, 2, 1).reshape(-1, 2, h, w)  # (K, 2, h, w)
