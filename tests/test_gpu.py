"""The GPU path: what a CPU can check of it (the precision choice, resume's map_location, BN folding after
SyncBatchNorm, device placement of the dynamic masks and the mask resize) and, where CUDA exists, short real runs
(fp16 and bf16 steps, resume on CUDA, NCCL DDP on two GPUs). The CUDA tests skip on a machine without it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from rtmdet_lesson import train_state
from rtmdet_lesson.checkpoint import load_checkpoint
from rtmdet_lesson.fast import fold_batchnorm, low_precision_dtype, optimize_for_inference
from rtmdet_lesson.presets import build_model
from rtmdet_lesson.train import train

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_bf16_only_where_the_gpu_convolves_in_bf16(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16 (torch.cuda.is_bf16_supported() says True there): fp16 instead."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    seen = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: seen.append(device) or capability)
    assert low_precision_dtype(torch.device("cuda", 1)) == expected
    assert seen == [torch.device("cuda", 1)]  # the device's own capability, not the current device's


def test_resume_reads_the_checkpoint_on_the_cpu(sprites, tmp_path, monkeypatch, quick_config):
    """The saved RNG states must stay CPU tensors (torch.set_rng_state needs a CPU ByteTensor): a resume on a GPU
    that loaded them to the GPU failed. The model, EMA and optimizer states are copied to the device on loading."""
    config = quick_config(sprites, tmp_path / "run")
    train(config, max_iters=1)
    real, places = train_state.load_checkpoint, []

    def spy(path, map_location="cpu"):
        places.append(map_location)
        if map_location != "cpu":  # as a GPU load would be: nothing left on the CPU
            return torch.load(path, map_location="meta", weights_only=True)
        return real(path)

    monkeypatch.setattr(train_state, "load_checkpoint", spy)
    train(config, resume=tmp_path / "run" / "last.pth")
    assert places == ["cpu"]


def test_fold_batchnorm_folds_sync_batchnorm_too():
    """After SyncBatchNorm conversion (multi-GPU training), rank 0's evaluation model has SyncBatchNorm layers."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(build_model("course-sprites")).eval()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_the_step_keeps_every_tensor_on_the_inputs_device():
    """With meta as the default device, any tensor made without device= in the loss or the post-processing
    lands on meta and fails when mixed with the CPU inputs."""
    model = build_model("course-sprites", input_size=64).eval()
    fast = optimize_for_inference(model, "exact")
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
    with torch.device("meta"):
        found = fast.predict(image, score_thr=0.0)
    assert found[0].masks.device.type == "cpu"


# ---------------------------------------------------------------------------------------------------------------
# on a CUDA GPU


@needs_cuda
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_steps_are_finite_on_cuda(sprites, tmp_path, amp, quick_config):
    if amp == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 convolutions need compute capability 8.0")
    summary = train(quick_config(sprites, tmp_path / "run", device="cuda", amp=amp, channels_last=True, epochs=3))
    assert summary["skipped_steps"] <= 2  # fp16: the grad scaler may skip its first overflowing steps
    state = summary["train_model"].state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@needs_cuda
def test_resume_on_cuda_continues_the_run(sprites, tmp_path, quick_config):
    config = quick_config(sprites, tmp_path / "run", device="cuda", epochs=2)
    stopped = train(config, max_iters=3)
    assert stopped["stopped"]
    resumed = train(config, resume=tmp_path / "run" / "last.pth")
    assert resumed["iterations"] == 4
    state = load_checkpoint(tmp_path / "run" / "last.pth")["train_state"]
    assert state["iteration"] == 4 and state["rng"][0]["torch"].device.type == "cpu"


NCCL_SCRIPT = """
import hashlib, sys
from rtmdet_lesson.train import TrainConfig, train

data, out = sys.argv[1], sys.argv[2]
summary = train(TrainConfig(data=data, out=out, image_size=64, epochs=2, batch_size=2, workers=0, warmup_iters=1,
                            augment="none", stage2_epochs=0, eval_interval=1, save_interval=2, device="cuda",
                            progress=False))
digest = hashlib.sha256()
for name, value in summary["train_model"].state_dict().items():
    digest.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
print("DIGEST", digest.hexdigest())
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_nccl_ddp_on_two_gpus_ends_identical_and_saves_with_save_interval_2(sprites, tmp_path):
    script = tmp_path / "nccl_train.py"
    script.write_text(textwrap.dedent(NCCL_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "RTMDET_LESSON_DEVICE"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(sprites), str(tmp_path / "ddp")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SyncBatchNorm" in result.stderr
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.pth")) == ["best.pth", "final.pth", "last.pth"]
