"""What a sample is, and the two rules every augmentation keeps (chapter 07).

A sample is ``(image, target)``: ``image`` uint8 (3, H, W) RGB and ``target`` a dict with ``boxes`` float32 (G, 4)
x1y1x2y2 (exclusive right/bottom), ``labels`` int64 (G,), ``masks`` bool (G, H, W) and ``image_id``.

- The masks are the truth: boxes are **recomputed** from the visible mask (``masks_to_boxes``), never moved
  arithmetically, so a crop or an occlusion can never leave a box bigger than what is left of the object.
- An instance whose mask became empty is removed together with its label (``with_masks``).
"""

from __future__ import annotations

import torch


def _projections(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which columns (G, W) and rows (G, H) each bool mask (G, H, W) touches.

    ``amax`` over the uint8 view of the bools answers the same as ``any`` with a plain max-reduction kernel.
    """
    as_bytes = masks.view(torch.uint8)
    return as_bytes.amax(dim=1) > 0, as_bytes.amax(dim=2) > 0


def _boxes_from_projections(cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Boxes (G, 4) from which columns (G, W) and rows (G, H) each mask touches; all-zero for empty masks."""
    w, h = cols.shape[1], rows.shape[1]
    xs = torch.arange(w, device=cols.device)
    ys = torch.arange(h, device=rows.device)
    x1 = torch.where(cols, xs, w).amin(dim=1)  # (G,) first touched column
    x2 = torch.where(cols, xs + 1, 0).amax(dim=1)  # (G,) one past the last
    y1 = torch.where(rows, ys, h).amin(dim=1)
    y2 = torch.where(rows, ys + 1, 0).amax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()  # (G, 4)
    return torch.where(cols.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight x1y1x2y2 boxes (G, 4) float32 around boolean masks (G, H, W), exclusive right/bottom.

    A mask covering columns 3..5 gives x1 = 3, x2 = 6. An empty mask gives an all-zero box (callers drop
    empty masks first).
    """
    if masks.ndim != 3:
        raise ValueError(f"masks_to_boxes wants masks of shape (G, H, W), got {tuple(masks.shape)}.")
    return _boxes_from_projections(*_projections(masks.bool()))


def check_image(image: torch.Tensor, fix: str = "convert it as the datasets do") -> None:
    """Raise ValueError unless ``image`` is a uint8 (3, H, W) RGB tensor; ``fix`` says how to get one."""
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"Expected an image of uint8 (3, H, W) RGB, got {got}; {fix}.")


def check_sample(image: torch.Tensor, target: dict) -> None:
    """Raise ValueError if ``(image, target)`` is not a dataset sample (the shapes and dtypes above)."""
    check_image(image)
    missing = {"boxes", "labels", "masks"} - set(target)
    if missing:
        raise ValueError(f"The target lacks {sorted(missing)}; give boxes, labels and masks (see data/coco.py).")
    masks, labels, boxes = target["masks"], target["labels"], target["boxes"]
    if masks.dtype != torch.bool or masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"Expected masks bool (G, {image.shape[1]}, {image.shape[2]}) to match the image, got "
            f"{masks.dtype} {tuple(masks.shape)}; resize masks with the image (and use .bool())."
        )
    g = masks.shape[0]
    if labels.shape != (g,) or boxes.shape != (g, 4):
        raise ValueError(
            f"{g} masks but labels {tuple(labels.shape)} and boxes {tuple(boxes.shape)}; "
            "give one label and one box per mask."
        )


def with_masks(target: dict, masks: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """A new target for new masks (G, H, W): empty masks dropped with their labels, boxes recomputed.

    ``labels`` (G,) defaults to ``target["labels"]`` (aligned with ``masks``). Other keys are kept.
    """
    labels = target["labels"] if labels is None else labels
    cols, rows = _projections(masks)  # (G, W), (G, H)
    keep = cols.any(dim=1)  # (G,) True where some pixel is left
    out = dict(target)
    out["masks"] = masks if bool(keep.all()) else masks[keep]
    out["labels"] = labels[keep]
    out["boxes"] = _boxes_from_projections(cols[keep], rows[keep])
    return out


def filter_annotations(image: torch.Tensor, target: dict, min_wh: tuple[float, float] = (1, 1)):
    """Keep instances whose box is wider than ``min_wh[0]`` AND taller than ``min_wh[1]`` (strictly).

    mmdetection's ``FilterAnnotations`` (``mmdet/datasets/transforms/loading.py``) with min_gt_bbox_wh (1, 1):
    an object only one pixel wide or tall is dropped. One difference: when no instance survives, the reference
    draws another image; here the sample is kept with zero instances (a valid negative for the loss).
    """
    boxes = target["boxes"]
    keep = ((boxes[:, 2] - boxes[:, 0]) > min_wh[0]) & ((boxes[:, 3] - boxes[:, 1]) > min_wh[1])  # (G,)
    out = dict(target)
    for key in ("boxes", "labels", "masks"):
        out[key] = target[key][keep]
    return image, out


class FilterAnnotations:
    """``filter_annotations`` as a pipeline step."""

    def __init__(self, min_wh: tuple[float, float] = (1, 1)):
        self.min_wh = min_wh

    def __call__(self, image, target, rng=None):
        return filter_annotations(image, target, self.min_wh)
