"""RTMDet and RTMDet-Ins: backbone -> neck -> head (chapter 03).

``model(x)`` is the raw network: ``x`` is a normalised float batch ``(B, 3, H, W)`` with H and W multiples
of 32 (BGR, normalised with ``preprocess.MEAN_BGR``/``STD_BGR`` as official weights expect; use
``preprocess.normalize``). Letterboxing, normalisation and decoding live in ``predict``, so that the raw
network can be compared layer for layer with the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from rtmdet_lesson.backbone import CSPNeXt, scaled_channels, scaled_depth
from rtmdet_lesson.head import HeadOutput, RTMDetInsSepBNHead, RTMDetSepBNHead
from rtmdet_lesson.neck import CSPNeXtPAFPN

__all__ = ["RTMDet", "HeadOutput"]

SIZE_DIVISOR = 32  # the largest stride: the neck's x2 upsampling only lines up on multiples of it


class RTMDet(nn.Module):
    """The whole network, sized by two factors. Chapter 03 builds this.

    Args:
        num_classes: number of classes C (labels 0..C-1; no background logit).
        deepen_factor, widen_factor: depth and width multipliers of the P5 arch (official: tiny 0.167/0.375,
            s 0.33/0.5, m 0.67/0.75, l 1.0/1.0, x 1.33/1.25).
        with_mask: True builds RTMDet-Ins (kernel towers + prototypes), False the detector.
        exp_on_reg: detector only: distances are exp(raw) * stride (official m, l, x) instead of raw * stride.
        separate_reg_tower: Ins only: build a real box tower instead of re-running the cls tower (the
            reference's behaviour, kept by default so that official counts and weights match).
        preset: the name it was built from (for checkpoints and printing).
        class_names: optional list of C names (index = label).
        input_size: the square canvas side the model is meant for (640 official, 320 course presets);
            ``predict`` letterboxes onto it. ``forward`` takes any multiple of 32.

    ``forward(x (B, 3, H, W)) -> HeadOutput`` with per-level lists at strides ``self.strides``.
    """

    strides = (8, 16, 32)

    def __init__(
        self,
        num_classes: int = 80,
        deepen_factor: float = 1.0,
        widen_factor: float = 1.0,
        with_mask: bool = True,
        exp_on_reg: bool = True,
        separate_reg_tower: bool = False,
        preset: str = "custom",
        class_names: list[str] | None = None,
        input_size: int = 640,
    ):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for num_classes={num_classes}; give one per class")
        self.num_classes, self.with_mask, self.preset, self.input_size = num_classes, with_mask, preset, input_size
        self.class_names = list(class_names) if class_names is not None else None
        self.settings = dict(
            num_classes=num_classes,
            deepen_factor=deepen_factor,
            widen_factor=widen_factor,
            with_mask=with_mask,
            exp_on_reg=exp_on_reg,
            separate_reg_tower=separate_reg_tower,
            input_size=input_size,
        )
        self.backbone = CSPNeXt(deepen_factor, widen_factor)
        neck_channels = scaled_channels(256, widen_factor)
        self.neck = CSPNeXtPAFPN(self.backbone.out_channels, neck_channels, scaled_depth(3, deepen_factor))
        if with_mask:
            self.head = RTMDetInsSepBNHead(
                num_classes, neck_channels, strides=self.strides, separate_reg_tower=separate_reg_tower
            )
        else:
            self.head = RTMDetSepBNHead(num_classes, neck_channels, strides=self.strides, exp_on_reg=exp_on_reg)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        check_input(x)
        return self.head(self.neck(self.backbone(x)))

    def loss(self, x: torch.Tensor, targets: list[dict]) -> dict:
        """Training losses of a batch (chapter 06): ``criterion.compute_losses(self(x), targets, (H, W))``."""
        from rtmdet_lesson.criterion import compute_losses

        return compute_losses(self(x), targets, image_size=tuple(x.shape[-2:]))

    def predict(self, images, **kwargs):
        """Instances on raw images of any size (chapter 08): ``predict.predict(self, images, **kwargs)``."""
        from rtmdet_lesson.predict import predict

        return predict(self, images, **kwargs)


def check_input(x: torch.Tensor) -> None:
    """Reject inputs the network cannot take, with the fix, before they fail deep inside a conv."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a batch of shape (B, 3, H, W), got {shape}; add a batch dimension with x[None]")
    if not x.is_floating_point():
        raise ValueError(
            f"expected a normalised float batch, got dtype {x.dtype}; use rtmdet_lesson.preprocess.normalize"
        )
    h, w = x.shape[-2:]
    if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        fit_h, fit_w = -(-h // SIZE_DIVISOR) * SIZE_DIVISOR, -(-w // SIZE_DIVISOR) * SIZE_DIVISOR
        raise ValueError(
            f"input size {h}x{w} (HxW) is not a multiple of {SIZE_DIVISOR}; letterbox the image with "
            f"rtmdet_lesson.preprocess.letterbox_image (e.g. to 640x640) or pad it to {fit_h}x{fit_w}"
        )

