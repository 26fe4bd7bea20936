"""ONNX export and the ONNX Runtime backend (rtmdet_lesson.deploy): the exported graph computes what the torch
model computes, its metadata carries the preprocessing contract, predict/evaluate give the torch answers through
it, and every mistake a user can make gets a one-line error that names the fix."""

import json
import re
import sys

import numpy as np
import onnx  # the deploy extra, which the dev extra installs: no skipping, so that CI tests the export
import pytest
import torch
from conftest import REPO_ROOT

from rtmdet_lesson.__main__ import main as cli
from rtmdet_lesson.checkpoint import load_checkpoint_model, save_checkpoint
from rtmdet_lesson.data.coco import sprites_split
from rtmdet_lesson.data.sprites import generate_sprites
from rtmdet_lesson.deploy import DeployContract, export_onnx, load_onnx_model, output_names
from rtmdet_lesson.fast import optimize_for_inference
from rtmdet_lesson.predict import predict
from rtmdet_lesson.preprocess import MEAN_BGR, PAD_VALUE, STD_BGR
from rtmdet_lesson.presets import build_model

SHIPPED = REPO_ROOT / "data" / "course-sprites.pth"
TINY_CANVAS = 128  # small, so that the random RTMDet-Ins-tiny exports and runs in seconds
CATEGORY_IDS = {k: 2 * k + 1 for k in range(80)}  # non-contiguous dataset ids, as COCO's are


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def shipped_onnx(workdir):
    """The shipped course model exported by the command line: batch 1, its own 320 canvas."""
    path = workdir / "course-sprites.onnx"
    assert cli(["export", "--checkpoint", str(SHIPPED), "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def tiny(workdir):
    """A random RTMDet-Ins-tiny with non-zero BN statistics, saved with a category map, exported for any batch."""
    torch.manual_seed(0)
    model = build_model("rtmdet-ins-tiny").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # folding must use these, not the identity defaults
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    checkpoint = save_checkpoint(workdir / "tiny.pth", model, label_to_category_id=CATEGORY_IDS)
    path = export_onnx(checkpoint, workdir / "tiny.onnx", canvas=TINY_CANVAS, dynamic_batch=True)
    return model, path, load_onnx_model(path)


@pytest.fixture(scope="module")
def shipped_ort(shipped_onnx):
    return load_onnx_model(shipped_onnx)


def assert_outputs_match(expected, got, rtol=1e-4):
    """Every raw output of ``got`` within ``rtol`` of ``expected``, relative to the tensor's largest value."""
    pairs = [("mask_feats", expected.mask_feats, got.mask_feats)]
    for name in ("cls_scores", "bbox_preds", "kernel_preds"):
        assert len(getattr(got, name)) == len(getattr(expected, name)) == 3
        pairs += [(f"{name}[{level}]", e, g) for level, (e, g) in
                  enumerate(zip(getattr(expected, name), getattr(got, name), strict=True))]
    for name, e, g in pairs:
        assert g.dtype == torch.float32 and g.shape == e.shape, name
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * e.abs().max().item(), msg=name)


def test_the_shipped_model_exports_and_matches_torch(shipped_ort):
    model, ort_model = load_checkpoint_model(SHIPPED), shipped_ort
    x = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(0))  # batch 2 on a batch-1 graph
    with torch.no_grad():
        assert_outputs_match(model(x), ort_model(x))
        assert_outputs_match(model(x[:1]), ort_model(x[:1]))


@pytest.mark.parametrize("batch", [1, 2])
def test_tiny_with_a_dynamic_batch_matches_torch(tiny, batch):
    model, _, ort_model = tiny
    assert ort_model.session.get_inputs()[0].shape == ["batch", 3, TINY_CANVAS, TINY_CANVAS]
    x = torch.randn(batch, 3, TINY_CANVAS, TINY_CANVAS, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        assert_outputs_match(model(x), ort_model(x))


def test_the_exported_graph_is_the_exact_network(shipped_onnx):
    """BN folded (not one BatchNormalization node left) and named outputs in HeadOutput's order."""
    proto = onnx.load(shipped_onnx)
    assert not [node for node in proto.graph.node if node.op_type == "BatchNormalization"]
    assert [o.name for o in proto.graph.output] == output_names(3, with_mask=True)
    assert [i.name for i in proto.graph.input] == ["images"]


def test_the_metadata_round_trips(shipped_onnx, shipped_ort, tiny):
    _, tiny_path, tiny_ort = tiny
    for path, ort_model, preset, canvas, ids in [
            (shipped_onnx, shipped_ort, "course-sprites", [320, 320], None),
            (tiny_path, tiny_ort, "rtmdet-ins-tiny", [TINY_CANVAS, TINY_CANVAS], CATEGORY_IDS)]:
        proto = onnx.load(path)
        from_onnx = DeployContract.from_metadata({p.key: p.value for p in proto.metadata_props})
        from_ort = ort_model.contract
        assert from_onnx == from_ort
        assert (from_onnx.preset, from_onnx.canvas, from_onnx.label_to_category_id) == (preset, canvas, ids)
        assert from_onnx.channel_order == "BGR" and from_onnx.pad_value == PAD_VALUE
        assert from_onnx.mean == list(MEAN_BGR) and from_onnx.std == list(STD_BGR)
        assert from_onnx.network == "exact" and "BGR" in proto.doc_string
    shipped = shipped_ort
    assert shipped.class_names == ["portrait", "character", "slime", "chest", "coin"]
    assert (shipped.contract.dynamic_batch, shipped.contract.batch, shipped.input_size) == (False, 1, 320)
    assert shipped.label_to_category_id == {k: k + 1 for k in range(5)}  # no map in the checkpoint: label + 1
    assert tiny_ort.label_to_category_id == CATEGORY_IDS
    contract = shipped.contract
    assert DeployContract.from_metadata(contract.to_metadata()) == contract
    assert all(isinstance(v, str) for v in contract.to_metadata().values())


@pytest.fixture(scope="module")
def sprites(workdir):
    generate_sprites(workdir / "sprites", seed=3, n_train=0, n_val=3)
    return workdir / "sprites"


def test_predict_through_onnxruntime_equals_torch(shipped_ort, sprites):
    images = [image for image, _ in sprites_split(sprites, "val")]
    expected = predict(load_checkpoint_model(SHIPPED), images)
    got = predict(shipped_ort, images)
    assert sum(len(found) for found in expected) > 0
    for e, g in zip(expected, got, strict=True):
        assert len(g) == len(e)
        assert torch.equal(g.labels, e.labels)
        torch.testing.assert_close(g.scores, e.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(g.boxes, e.boxes, rtol=0, atol=1e-2)
        assert (g.masks != e.masks).float().mean() < 1e-4  # a pixel right at the threshold may flip


def test_cli_predict_and_evaluate_with_the_onnxruntime_backend(shipped_onnx, sprites, workdir, capsys):
    images = sorted(str(p) for p in (sprites / "val" / "images").glob("*.png"))[:1]
    results = {}
    for backend, checkpoint in (("torch", SHIPPED), ("onnxruntime", shipped_onnx)):
        out = workdir / f"predictions-{backend}"
        assert cli(["predict", *images, "--checkpoint", str(checkpoint), "--out", str(out), "--backend", backend,
                    "--device", "cpu"]) == 0
        results[backend] = json.loads((out / "results.json").read_text())
        assert cli(["evaluate", "--checkpoint", str(checkpoint), "--data", str(sprites), "--json", "--backend",
                    backend, "--device", "cpu"]) == 0
        results[backend, "metrics"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    torch_results, ort_results = results["torch"], results["onnxruntime"]
    assert len(ort_results) == len(torch_results) > 0
    for e, g in zip(torch_results, ort_results, strict=True):
        assert (g["image_id"], g["category_id"]) == (e["image_id"], e["category_id"])
        assert np.allclose(g["bbox"], e["bbox"], atol=1e-2) and abs(g["score"] - e["score"]) < 1e-5
    for key in ("bbox_AP", "segm_AP"):
        assert results["onnxruntime", "metrics"][key] == pytest.approx(results["torch", "metrics"][key], abs=1e-3)


def test_export_errors_name_the_fix(shipped_onnx, workdir, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(tmp_path / "nope.pth", tmp_path / "m.onnx")
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a checkpoint written by rtmdet_lesson"):
        export_onnx(not_a_checkpoint, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="is an exported ONNX model"):
        export_onnx(shipped_onnx, tmp_path / "m.onnx")
    before = shipped_onnx.read_bytes()
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        export_onnx(SHIPPED, shipped_onnx)
    assert shipped_onnx.read_bytes() == before
    assert cli(["export", "--checkpoint", str(SHIPPED), "--out", str(shipped_onnx)]) == 2
    assert re.search("already exists.*--overwrite", capsys.readouterr().err)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        export_onnx(SHIPPED, tmp_path)
    model = build_model("course-sprites").eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(model, tmp_path / "m.onnx", canvas=100)
    with pytest.raises(ValueError, match="the model itself"):
        export_onnx(optimize_for_inference(model), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="exports an RTMDet"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    assert list(tmp_path.glob("*.onnx")) == [] and list(tmp_path.glob(".*.tmp")) == []


def test_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_text("old")
    export_onnx(build_model("course-sprites-det").eval(), path, canvas=64, overwrite=True)
    ort_model = load_onnx_model(path, threads=1, spin=False)  # a detector: no kernels, no prototypes
    assert ort_model.contract.outputs == output_names(3, with_mask=False) and not ort_model.with_mask
    out = ort_model(torch.zeros(1, 3, 64, 64))
    assert out.kernel_preds is None and out.mask_feats is None and out.cls_scores[0].shape == (1, 5, 8, 8)


def test_runtime_errors_name_the_fix(shipped_onnx, shipped_ort, sprites, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist.*export"):
        load_onnx_model(tmp_path / "nope.onnx")
    with pytest.raises(ValueError, match="not an ONNX model.*--backend torch"):
        load_onnx_model(SHIPPED)
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX file that this package did not write
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["out"])], "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 32, 32])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), foreign)
    with pytest.raises(ValueError, match="not exported by rtmdet_lesson.*python -m rtmdet_lesson export"):
        load_onnx_model(foreign)
    ort_model = shipped_ort
    with pytest.raises(ValueError, match="exported for a 320x320 canvas.*--canvas 640"):
        ort_model(torch.zeros(1, 3, 640, 640))
    with pytest.raises(ValueError, match="multiple of 32"):
        ort_model(torch.zeros(1, 3, 100, 100))
    with pytest.raises(RuntimeError, match="inference only"):
        ort_model.train()
    # an .onnx file given to the torch backend, and a missing one: one line each, exit status 2
    assert cli(["evaluate", "--checkpoint", str(shipped_onnx), "--data", str(sprites)]) == 2
    assert "--backend onnxruntime" in capsys.readouterr().err
    assert cli(["evaluate", "--checkpoint", str(tmp_path / "x.onnx"), "--data", str(sprites),
                "--backend", "onnxruntime"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("package", ["onnx", "onnxscript", "onnxruntime"])
def test_without_the_deploy_extra_the_error_says_what_to_install(package, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    run = (lambda: load_onnx_model(tmp_path / "m.onnx")) if package == "onnxruntime" else (
        lambda: export_onnx(SHIPPED, tmp_path / "m.onnx"))
    with pytest.raises(ImportError, match=rf"{package}.*pip install -e \.\[deploy\]"):
        run()
