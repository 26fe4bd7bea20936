"""What the network expects as input: letterboxing and normalisation (chapters 03 and 08).

The reference (and every official mmdetection checkpoint) eats **BGR** images normalised with the BGR-ordered
mean and std below. The course keeps that convention for its own models too, so one pipeline serves both:
give ``normalize`` RGB uint8 images, as Pillow and the datasets return them, and it flips them to BGR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The reference's DetDataPreprocessor, in BGR order (data_preprocessor in configs/rtmdet/rtmdet_l_8xb32-300e_coco.py).
MEAN_BGR = (103.53, 116.28, 123.675)
STD_BGR = (57.375, 57.12, 58.395)
PAD_VALUE = 114  # grey used to pad letterboxed images, as in the reference pipelines


@dataclass(frozen=True)
class Letterbox:
    """How an original image was placed on the network's canvas.

    A pixel ``(x, y)`` of the original image lands at ``(x * scale_x + pad_left, y * scale_y + pad_top)``
    on the canvas. Named fields, never a bare tuple: swapping the two scales is the bug behind masks that
    miss their boxes on non-square images (mmdetection issues #10179 and #11230, PR #11231).
    """

    scale_x: float
    scale_y: float
    pad_left: int
    pad_top: int
    original_size: tuple[int, int]  # (H, W) of the original image
    canvas_size: tuple[int, int]  # (H, W) of the padded network input

    @property
    def resized_size(self) -> tuple[int, int]:
        """(H, W) of the image content on the canvas, before padding."""
        h, w = self.original_size
        return round(h * self.scale_y), round(w * self.scale_x)

    def boxes_to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """Map x1y1x2y2 boxes (K, 4) from canvas pixels back to original-image pixels, clamped to the image."""
        h, w = self.original_size
        offset = boxes.new_tensor([self.pad_left, self.pad_top, self.pad_left, self.pad_top])
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        out = (boxes - offset) / scale
        return torch.stack(
            [out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], dim=1
        )


def letterbox_geometry(original_size: tuple[int, int], canvas_size: tuple[int, int]) -> Letterbox:
    """Keep-ratio resize so the image fits the canvas, placed at the top-left (the reference pads bottom/right)."""
    h, w = original_size
    ch, cw = canvas_size
    if h <= 0 or w <= 0:
        raise ValueError(f"letterbox: the image is empty (H={h}, W={w}); give an image with pixels in it.")
    scale = min(ch / h, cw / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    return Letterbox(
        scale_x=new_w / w, scale_y=new_h / h, pad_left=0, pad_top=0, original_size=(h, w), canvas_size=(ch, cw)
    )


def letterbox_image(image: torch.Tensor, canvas_size: tuple[int, int]) -> tuple[torch.Tensor, Letterbox]:
    """Resize a uint8 RGB image (3, H, W) into a padded canvas (3, CH, CW); return it and its ``Letterbox``.

    Bilinear resize for images (masks use nearest elsewhere), padded with grey 114 at the bottom/right.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"letterbox_image wants a (3, H, W) RGB tensor, got shape {tuple(image.shape)}.")
    box = letterbox_geometry((image.shape[1], image.shape[2]), canvas_size)
    new_h, new_w = box.resized_size
    if (new_h, new_w) == tuple(image.shape[1:]):  # already fits: paste it, no resampling
        canvas = torch.full((3, *canvas_size), PAD_VALUE, dtype=torch.uint8, device=image.device)
        canvas[:, box.pad_top : box.pad_top + new_h, box.pad_left : box.pad_left + new_w] = image
        return canvas, box
    resized = torch.nn.functional.interpolate(
        image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
    )[0]
    canvas = torch.full((3, *canvas_size), float(PAD_VALUE), dtype=torch.float32, device=image.device)
    canvas[:, box.pad_top : box.pad_top + new_h, box.pad_left : box.pad_left + new_w] = resized
    return canvas.round().clamp(0, 255).to(torch.uint8), box


def normalize(images: torch.Tensor) -> torch.Tensor:
    """RGB uint8 (or 0-255 float) images (B, 3, H, W) -> BGR float, minus the reference mean, over its std."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"normalize wants (B, 3, H, W) RGB images, got shape {tuple(images.shape)}.")
    dtype = images.dtype if images.is_floating_point() else torch.float32
    bgr = images.flip(1).to(dtype)  # (B, 3, H, W), channels now B, G, R; flip copies, so bgr is ours
    mean = torch.tensor(MEAN_BGR, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD_BGR, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    return bgr.sub_(mean).div_(std)  # in place: the same values, no two more batch-sized allocations
