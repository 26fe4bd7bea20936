"""Export a model's raw network to one ONNX file, with its preprocessing contract in the metadata.

    python -m rtmdet_lesson export --checkpoint CKPT --out model.onnx [--canvas 640] [--dynamic-batch]

What is exported is ``model(x)``: a normalised batch in, the head's raw per-level outputs out (``HeadOutput``,
flattened to named tensors: ``contract.output_names``). Letterboxing, normalisation and post-processing
(candidates, NMS, dynamic masks) stay outside the graph, in this package's ``predict`` and ``postprocess``, which
run unchanged on the exported file through ``OnnxRuntimeModel``; a deployer in another language reads what to
do around the graph from its metadata (``contract.DeployContract``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

import rtmdet_lesson
from rtmdet_lesson.checkpoint import load_checkpoint, model_from_checkpoint
from rtmdet_lesson.deploy.contract import INPUT_NAME, DeployContract, output_names
from rtmdet_lesson.deploy.extra import import_extra
from rtmdet_lesson.fast import InferenceModel, SpeedOptions, optimize_for_inference
from rtmdet_lesson.model import SIZE_DIVISOR, RTMDet

__all__ = ["EXPORTED_SPEED", "add_export_arguments", "export_onnx", "main"]

# What export_onnx exports: the "exact" network of chapter 09 without its channels-last memory (a layout hint for
# torch's kernels that means nothing in an ONNX graph). See export_onnx's docstring for why.
EXPORTED_SPEED = SpeedOptions(fold_bn=True, single_cls_pass=True)


class FlatOutputs(nn.Module):
    """The network with its ``HeadOutput`` flattened to a tuple, in ``output_names`` order: an ONNX graph returns
    a flat list of named tensors, not a dataclass of lists.

    ``forward(images (B, 3, H, W)) -> (cls_scores_0.., bbox_preds_0.., [kernel_preds_0.., mask_feats])``.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(images)
        if out.mask_feats is None:
            return (*out.cls_scores, *out.bbox_preds)
        return (*out.cls_scores, *out.bbox_preds, *out.kernel_preds, out.mask_feats)


def _model_and_category_ids(model_or_checkpoint) -> tuple[RTMDet, dict[int, int] | None]:
    """An ``RTMDet``, a checkpoint dict or a checkpoint path -> (the model, its label -> category id map)."""
    if isinstance(model_or_checkpoint, (str, Path)):
        model_or_checkpoint = load_checkpoint(model_or_checkpoint)  # FileNotFoundError / ValueError that say why
    if isinstance(model_or_checkpoint, dict):
        if "model" not in model_or_checkpoint or "settings" not in model_or_checkpoint:
            raise ValueError("export_onnx got a dict that is not a checkpoint of this package (no 'model' and "
                             "'settings'); give load_checkpoint(path), the path itself or the model")
        ids = model_or_checkpoint.get("label_to_category_id")
        ids = None if ids is None else {int(k): int(v) for k, v in ids.items()}
        return model_from_checkpoint(model_or_checkpoint, "cpu"), ids
    if isinstance(model_or_checkpoint, InferenceModel):
        raise ValueError("export_onnx got optimize_for_inference's copy; give it the model itself (it exports the "
                         "exact network, BN folded, on its own)")
    if not isinstance(model_or_checkpoint, RTMDet):
        raise ValueError(f"export_onnx exports an RTMDet, a checkpoint dict or a checkpoint path, got "
                         f"{type(model_or_checkpoint).__name__}")
    return model_or_checkpoint, None


def _canvas(canvas, model: RTMDet) -> tuple[int, int]:
    canvas = canvas if canvas is not None else model.input_size
    h, w = (canvas, canvas) if isinstance(canvas, int) else tuple(canvas)
    if h <= 0 or w <= 0 or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise ValueError(f"canvas must be positive multiples of {SIZE_DIVISOR}, got {h}x{w} (HxW); try 320 or 640")
    return h, w


def _output_path(path, overwrite: bool) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; give the file to write, e.g. {path / 'model.onnx'}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists; choose another name or pass overwrite=True "
                              "(--overwrite on the command line)")
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's chatter (progress lines, notes about torchvision ops we do not use) but not its errors."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    model_or_checkpoint,
    path: str | Path,
    canvas: int | tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    overwrite: bool = False,
    label_to_category_id: dict[int, int] | None = None,
    opset: int | None = None,
) -> Path:
    """Write the raw network of a model to one self-contained ONNX file, its contract in the metadata.

    Args:
        model_or_checkpoint: an ``RTMDet``, a checkpoint path (``save_checkpoint``'s files) or the dict
            ``load_checkpoint`` returns. A checkpoint's ``label_to_category_id`` goes into the metadata.
        path: the ``.onnx`` file to write (weights inside it; folders are made). An existing file is an error
            unless ``overwrite``; the file is written to a temporary name and renamed, never left half-written.
        canvas: the input's square side or (H, W), multiples of 32 (default: ``model.input_size``, 640 for the
            official presets, 320 for the course's). The graph takes that size only; ``predict`` letterboxes
            every image onto it.
        dynamic_batch: False builds a graph for batch 1 (``OnnxRuntimeModel`` runs a batch image by image);
            True one for any batch size.
        label_to_category_id: overrides the checkpoint's map (labels 0..C-1 -> dataset category ids).
        opset: the ONNX opset (default: the exporter's).

    Returns:
        The path written.

    Which network: the ``exact`` one of chapter 09 (``fast.optimize_for_inference``), not the model as built.
    Its outputs equal the plain network's to float rounding (``tests/test_export.py`` checks 1e-4 relative
    against the plain model), and it gives the simpler graph without relying on the exporter's optimiser: every
    BatchNorm folded into its conv and the Ins head's cls tower run once. Exported as built, the graph keeps the
    head's BNs (its shared conv meets a different BN on each level, so no pass can fold them into one conv;
    ``exact`` gives each level its own folded conv) and depends on the optimiser noticing that the box branch's
    second pass of the cls tower repeats the first. ``exact`` also exports faster. The plain network's
    layer-for-layer view is for comparing with the reference, which a deployed file is not for. Exported with
    ``torch.onnx.export(..., dynamo=True)`` (``torch.export``), the exporter torch recommends; the network has no
    data-dependent control flow, so tracing loses nothing.
    """
    onnx = import_extra("onnx")
    import_extra("onnxscript")  # the dynamo exporter needs it; say so before it fails deep inside
    path = _output_path(path, overwrite)
    model, checkpoint_ids = _model_and_category_ids(model_or_checkpoint)
    if hasattr(model.head, "rtm_ang"):  # RTMDet-R (chapter 10): its angle outputs would be dropped without a word
        raise ValueError(f"{model.preset} is an RTMDet-R model; the ONNX export covers RTMDet and RTMDet-Ins only "
                         "(their outputs and post-processing), so run rotated checkpoints with predict/evaluate")
    label_to_category_id = label_to_category_id if label_to_category_id is not None else checkpoint_ids
    height, width = _canvas(canvas, model)
    network = optimize_for_inference(model, EXPORTED_SPEED, device="cpu").network  # a folded copy, fp32, eval
    names = output_names(len(network.strides), network.with_mask)
    batch = 2 if dynamic_batch else 1  # torch.export fixes a dimension whose example size is 1
    images = torch.zeros(batch, 3, height, width)  # (B, 3, H, W)
    dynamic_shapes = {INPUT_NAME: {0: torch.export.Dim("batch")}} if dynamic_batch else None
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(FlatOutputs(network).eval(), (images,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=names, dynamic_shapes=dynamic_shapes, opset_version=opset,
                                    verbose=False)
    proto = program.model_proto
    contract = DeployContract(
        preset=model.preset, num_classes=model.num_classes, class_names=model.class_names,
        with_mask=model.with_mask, strides=list(model.strides), canvas=[height, width], dynamic_batch=dynamic_batch,
        batch=None if dynamic_batch else batch, label_to_category_id=label_to_category_id, outputs=names,
        exported_by=f"rtmdet_lesson {rtmdet_lesson.__version__}, torch {torch.__version__}, onnx {onnx.__version__}",
    )
    onnx.helper.set_model_props(proto, contract.to_metadata())
    proto.doc_string = contract.describe()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(proto, tmp)  # weights inside the file: every preset is far below protobuf's 2 GB limit
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def add_export_arguments(parser) -> None:
    """The ``export`` sub-command's arguments (``__main__`` builds the parser)."""
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by this package (.pth)")
    parser.add_argument("--out", required=True, help="the ONNX file to write, e.g. model.onnx")
    parser.add_argument("--canvas", type=int, default=None,
                        help="square input side, a multiple of 32 (default: the model's, 640 official, 320 course)")
    parser.add_argument("--dynamic-batch", action="store_true", help="accept any batch size (default: batch 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(args) -> int:
    """``python -m rtmdet_lesson export`` (``__main__`` turns a user's mistake into one line)."""
    path = export_onnx(args.checkpoint, args.out, canvas=args.canvas, dynamic_batch=args.dynamic_batch,
                       overwrite=args.overwrite)
    contract = DeployContract.from_metadata({p.key: p.value for p in import_extra("onnx").load(path).metadata_props})
    size = contract.canvas
    print(f"{args.checkpoint} -> {path} ({path.stat().st_size / 2**20:.1f} MiB; {contract.preset}, canvas "
          f"{size[0]}x{size[1]}, batch {'any' if contract.dynamic_batch else contract.batch}, outputs "
          f"{', '.join(contract.outputs)}); run it with --backend onnxruntime --checkpoint {path}")
    return 0
