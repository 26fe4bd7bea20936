"""What an exported ONNX file expects and returns, written into its metadata (``metadata_props``).

An ONNX file holds the raw network only: ``images (B, 3, H, W) float32 -> the head's raw outputs``. Everything a
deployer must do around it (channel order, mean and std, letterboxing, canvas size, how to read the outputs,
which category id a label stands for) is this package's ``preprocess`` and ``postprocess``, and travels with the
file as the ``DeployContract`` below, so that a program in any language can read it back (Netron shows it too).

Each field is one ``metadata_props`` entry: strings as they are, everything else as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from rtmdet_lesson.preprocess import MEAN_BGR, PAD_VALUE, STD_BGR

FORMAT = "rtmdet_lesson-onnx/1"  # marks our exported files; lets the runner tell them from other ONNX files
INPUT_NAME = "images"
HEAD_FIELDS = ("cls_scores", "bbox_preds", "kernel_preds")  # per-level outputs, as in ``HeadOutput``
LETTERBOX = ("keep-ratio resize so the whole image fits the canvas (s = min(H / h, W / w), new size round(h * s) x "
             "round(w * s), bilinear, antialiased), placed at the top-left, the rest padded with pad_value; canvas "
             "coordinates map back to the image by dividing x by round(w * s) / w and y by round(h * s) / h")


def output_names(num_levels: int, with_mask: bool) -> list[str]:
    """The graph's outputs in order: ``cls_scores_0..``, ``bbox_preds_0..``, (``kernel_preds_0..``, ``mask_feats``).

    Level ``l`` has stride ``strides[l]``; the names follow ``HeadOutput``'s fields so the runner can refill it.
    """
    per_level = HEAD_FIELDS if with_mask else HEAD_FIELDS[:2]
    names = [f"{name}_{level}" for name in per_level for level in range(num_levels)]
    return names + (["mask_feats"] if with_mask else [])


@dataclass(frozen=True)
class DeployContract:
    """The preprocessing and output contract of an exported model (see the module doc).

    ``canvas`` is (H, W) of the network input; ``batch`` is the batch size the graph was built for, or None when
    ``dynamic_batch`` (any batch). ``label_to_category_id`` maps the model's labels 0..C-1 to the dataset's
    category ids (None: the checkpoint had none, use label + 1).
    """

    preset: str
    num_classes: int
    class_names: list[str] | None
    with_mask: bool
    strides: list[int]
    canvas: list[int]  # (H, W)
    dynamic_batch: bool
    batch: int | None
    label_to_category_id: dict[int, int] | None = None
    network: str = "exact"  # rtmdet_lesson.fast: BatchNorm folded, the Ins head's cls tower run once
    input_name: str = INPUT_NAME
    input_layout: str = "(B, 3, H, W) float32, H and W the canvas"
    channel_order: str = "BGR"
    mean: list[float] = field(default_factory=lambda: list(MEAN_BGR))  # per channel, in channel_order
    std: list[float] = field(default_factory=lambda: list(STD_BGR))
    pixel_range: str = "0-255 before normalisation: x = (pixel - mean) / std"
    letterbox: str = LETTERBOX
    pad_value: int = PAD_VALUE
    outputs: list[str] = field(default_factory=list)
    output_layout: str = ("per level l (stride strides[l]): cls_scores_l (B, C, H/s, W/s) class logits (sigmoid), "
                          "bbox_preds_l (B, 4, H/s, W/s) distances left, top, right, bottom from the prior point in "
                          "canvas pixels, kernel_preds_l (B, 169, H/s, W/s) dynamic mask parameters; mask_feats "
                          "(B, 8, H/8, W/8) mask prototypes; post-processing: rtmdet_lesson.postprocess")
    format: str = FORMAT
    exported_by: str = ""

    def to_metadata(self) -> dict[str, str]:
        """``{key: value}`` strings for ``onnx.helper.set_model_props``: strings raw, the rest as JSON."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> DeployContract:
        """The contract back from a file's metadata (ONNX Runtime: ``session.get_modelmeta().custom_metadata_map``).

        Raises ValueError, naming the fix, for files this package did not export.
        """
        if metadata.get("format") != FORMAT:
            found = f"format {metadata['format']!r}" if "format" in metadata else "no 'format' entry in its metadata"
            raise ValueError(f"this ONNX file was not exported by rtmdet_lesson ({found}, expected {FORMAT!r}); "
                             "export one with `python -m rtmdet_lesson export --checkpoint CKPT --out model.onnx`")
        values = {}
        for f in fields(cls):
            if f.name in metadata:
                values[f.name] = metadata[f.name] if f.type == "str" else json.loads(metadata[f.name])
        if values.get("label_to_category_id") is not None:  # JSON keys are strings
            values["label_to_category_id"] = {int(k): int(v) for k, v in values["label_to_category_id"].items()}
        return cls(**values)

    def describe(self) -> str:
        """A paragraph for the ONNX file's ``doc_string``: what to feed the graph and what it returns."""
        names = ", ".join(self.class_names or [str(c) for c in range(self.num_classes)])
        return (f"RTMDet{'-Ins' if self.with_mask else ''} ({self.preset}, {self.num_classes} classes: {names}), "
                f"raw network ({self.network} path) exported by rtmdet_lesson. Input {self.input_name!r}: "
                f"{self.input_layout}, canvas {self.canvas[0]}x{self.canvas[1]} (HxW), batch "
                f"{'any' if self.dynamic_batch else self.batch}. Preprocess: {self.letterbox} "
                f"(pad_value {self.pad_value}); channels {self.channel_order}; pixels {self.pixel_range}, "
                f"mean {self.mean}, std {self.std}. Outputs: {self.output_layout}. Every field is also in "
                "metadata_props (strings raw, others JSON).")
