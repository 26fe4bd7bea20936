"""Run an exported ONNX file in ONNX Runtime behind the interface of ``model(x)``.

``OnnxRuntimeModel(x)`` returns the same ``HeadOutput`` as the torch model, so this package's own ``predict``,
``postprocess`` and ``evaluate_coco`` run on it unchanged: only the network moves to ONNX Runtime, the
post-processing stays this package's Python (``python -m rtmdet_lesson predict|evaluate --backend onnxruntime``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtmdet_lesson.deploy.contract import HEAD_FIELDS, DeployContract
from rtmdet_lesson.deploy.extra import import_extra
from rtmdet_lesson.head import HeadOutput
from rtmdet_lesson.model import check_input

__all__ = ["OnnxRuntimeModel", "load_onnx_model"]

EXPORT_HINT = "export one with `python -m rtmdet_lesson export --checkpoint CKPT --out model.onnx`"


def _providers(ort, device) -> list[str]:
    """ONNX Runtime execution providers for a device name: ``None``/``"cpu"`` the CPU, ``"cuda"`` CUDA first."""
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("this onnxruntime has no CUDA provider; install onnxruntime-gpu instead of onnxruntime, "
                             "or run on the CPU (--device cpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"the onnxruntime backend runs on cpu or cuda, not {kind}; use --device cpu or the torch backend")


class OnnxRuntimeModel(nn.Module):
    """An exported model (``export_onnx``) in an ONNX Runtime session, called like ``RTMDet``.

    ``forward(x (B, 3, H, W) float) -> HeadOutput`` with fp32 CPU tensors, H x W the exported canvas. A graph
    exported for batch 1 runs a larger batch image by image. It has the attributes ``predict`` and the command line
    read from a model (``num_classes``, ``class_names``, ``with_mask``, ``strides``, ``input_size``, ``preset``),
    from the file's metadata, plus ``contract`` (all of it) and ``label_to_category_id`` (the checkpoint's map,
    else label + 1). It has no parameters: ``predict`` then feeds it fp32 on the CPU. Inference only.

    Args:
        path: the ``.onnx`` file.
        device: ``None``/``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu).
        threads: ONNX Runtime's intra-op threads (default: ``torch.get_num_threads()``, so that both backends
            use the same number of cores).
        spin: let ONNX Runtime's worker threads spin-wait for work after a run (its default: a little lower
            latency, but the cores stay busy for a moment after every run). False lets them sleep, which suits a
            shared CPU or a process that runs torch work between calls (``benchmarks/bench_inference.py`` times
            torch in turn with it).
    """

    def __init__(self, path: str | Path, device: str | torch.device | None = None, threads: int | None = None,
                 spin: bool = True):
        super().__init__()
        ort = import_extra("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {str(path)!r} does not exist; check the path, or {EXPORT_HINT}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only: its warnings are about optimisations, not our graph
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = _providers(ort, device)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own kinds (Fail, InvalidProtobuf, ...) on foreign files
            hint = (f"a .pth checkpoint runs with --backend torch, or {EXPORT_HINT.replace('one', 'it')}"
                    if path.suffix in (".pth", ".pt") else EXPORT_HINT)
            raise ValueError(f"{str(path)!r} is not an ONNX model ONNX Runtime can load "
                             f"({str(error).splitlines()[0][:200]}); {hint}") from error
        try:
            self.contract = DeployContract.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        except ValueError as error:
            raise ValueError(f"{str(path)!r}: {error}") from error
        c = self.contract
        self.path, self.num_classes, self.with_mask, self.preset = path, c.num_classes, c.with_mask, c.preset
        self.class_names, self.strides = c.class_names, tuple(c.strides)
        self.input_size = c.canvas[0] if c.canvas[0] == c.canvas[1] else tuple(c.canvas)
        self.label_to_category_id = c.label_to_category_id or {k: k + 1 for k in range(c.num_classes)}
        super().train(False)

    def train(self, mode: bool = True) -> OnnxRuntimeModel:
        if mode:
            raise RuntimeError("an ONNX Runtime model is for inference only; train the torch model and export it again")
        return super().train(False)

    def _check_canvas(self, x: torch.Tensor) -> None:
        canvas = tuple(self.contract.canvas)
        if tuple(x.shape[-2:]) != canvas:
            raise ValueError(
                f"{self.path.name} was exported for a {canvas[0]}x{canvas[1]} canvas (HxW), got an input of "
                f"{x.shape[-2]}x{x.shape[-1]}; letterbox onto {canvas[0]}x{canvas[1]} (predict does, with the default "
                f"canvas_size) or export again with --canvas {x.shape[-2]}")

    def _run(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.contract.outputs, {self.contract.input_name: images})

    def forward(self, x: torch.Tensor) -> HeadOutput:
        check_input(x)
        self._check_canvas(x)
        images = x.detach().to("cpu", torch.float32).contiguous().numpy()  # (B, 3, H, W)
        if self.contract.dynamic_batch or len(images) == self.contract.batch:
            arrays = self._run(images)
        elif self.contract.batch == 1:  # a batch-1 graph: image by image, outputs stacked on the batch axis
            per_image = [self._run(images[i : i + 1]) for i in range(len(images))]
            arrays = [np.concatenate(parts) for parts in zip(*per_image, strict=True)]
        else:
            raise ValueError(f"{self.path.name} was exported for batch {self.contract.batch}, got {len(images)}; "
                             "give that batch or export again with --dynamic-batch")
        outputs = dict(zip(self.contract.outputs, (torch.from_numpy(a) for a in arrays), strict=True))
        levels = range(len(self.strides))
        per_level = {name: [outputs[f"{name}_{level}"] for level in levels] for name in HEAD_FIELDS
                     if f"{name}_0" in outputs}  # each [(B, C_out, H_l, W_l)]
        return HeadOutput(per_level["cls_scores"], per_level["bbox_preds"], per_level.get("kernel_preds"),
                          outputs.get("mask_feats"))  # mask_feats (B, 8, H/8, W/8) or None

    def predict(self, images, **kwargs):
        """Instances on raw images (chapter 08's ``predict``, with the network in ONNX Runtime)."""
        from rtmdet_lesson.predict import predict

        return predict(self, images, **kwargs)


def load_onnx_model(path: str | Path, device: str | torch.device | None = None, threads: int | None = None,
                    spin: bool = True) -> OnnxRuntimeModel:
    """An exported file ready for ``predict`` and ``evaluate_coco``: ``OnnxRuntimeModel(...)`` with these arguments."""
    return OnnxRuntimeModel(path, device, threads, spin)
