#!/usr/bin/env bash
# The GPU check: everything the CPU test suite cannot show, on a machine with one or more CUDA GPUs, in about
# 10 minutes on a fresh clone. Run it as `make gpu-check`. It needs a CUDA build of torch in .venv: on a fresh
# clone it creates .venv with PyPI's default Linux torch (a CUDA build); an existing .venv with a CPU-only torch
# is refused with the command that fixes it. It prints one PASS/FAIL line per check and exits non-zero if any
# check failed.
#
#   1. the unit tests (pinned to the CPU, plus tests/test_gpu.py's CUDA tests) and strict nbval over every
#      notebook on the GPU, in fast mode;
#   2. short fp16 and bf16 training runs on CUDA, each stopped and resumed;
#   3. the shipped model evaluated through the plain, exact and fast paths: AP within 0.01 of its record;
#   4. with two or more GPUs: a torchrun run on two, its resume, and --save-interval 2 with an evaluation
#      every epoch (which hung NCCL before every rank joined rank 0's saves).
set -uo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin
export TQDM_DISABLE=1
unset RTMDET_LESSON_DEVICE
tmp=$(mktemp -d)
failures=0
summary=()

if [ ! -x "$B/python" ]; then
  python3 -m venv .venv && $B/python -m pip install --quiet --upgrade pip && $B/python -m pip install --quiet torch
fi
if ! $B/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu-check: the torch in .venv sees no CUDA GPU. Install a CUDA build first, e.g." \
       "'.venv/bin/pip install --force-reinstall torch' (PyPI's Linux default), then run make gpu-check again." >&2
  exit 2
fi
make setup data >/dev/null || { echo "gpu-check: make setup data failed" >&2; exit 2; }
$B/python - <<'PY'
import torch
for i in range(torch.cuda.device_count()):
    print(f"GPU {i}: {torch.cuda.get_device_name(i)}, compute capability {torch.cuda.get_device_capability(i)}")
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
PY

check() {  # check NAME COMMAND...: run, time, record PASS or FAIL
  local name=$1; shift
  local start=$SECONDS
  if "$@" >"$tmp/$name.log" 2>&1; then
    summary+=("PASS  $name ($((SECONDS - start)) s)")
  else
    summary+=("FAIL  $name ($((SECONDS - start)) s): see the end of $tmp/$name.log")
    failures=$((failures + 1))
    tail -20 "$tmp/$name.log"
  fi
}

NBVAL="$B/pytest -q --nbval --nbval-current-env --nbval-cell-timeout=300 --nbval-sanitize-with tests/nbval_sanitize.cfg"
check unit-tests env RTMDET_LESSON_FAST=1 $B/pytest -q tests
check notebooks-on-cuda env RTMDET_LESSON_FAST=1 $NBVAL notebooks

train_and_resume() {  # train_and_resume AMP: 40 iterations, stop, resume to 60; finite losses, few skipped steps
  local out=$tmp/train-$1
  $B/python -m rtmdet_lesson train course-sprites --data data/sprites --out "$out" --epochs 2 --batch-size 16 \
    --amp "$1" --set channels_last=true --workers 2 --max-iters 40 --device cuda --set progress=false || return 1
  $B/python -m rtmdet_lesson train --resume "$out/last.pth" --max-iters 60 --set progress=false || return 1
  $B/python - "$out/log.jsonl" <<'PY'
import json, math, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if "event" not in r]
print(len(rows), "steps; loss", rows[0]["loss"], "->", rows[-1]["loss"], "; skipped", rows[-1]["skipped_steps"])
assert [r["iteration"] for r in rows] == list(range(1, 61)), "the resumed run does not continue the stopped one"
assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["skipped_steps"] <= 5
PY
}
check train-fp16-resume train_and_resume fp16
if $B/python -c "import torch, sys; sys.exit(0 if torch.cuda.get_device_capability()[0] >= 8 else 1)"; then
  check train-bf16-resume train_and_resume bf16
else
  summary+=("SKIP  train-bf16-resume: this GPU has no bf16 convolutions (compute capability below 8.0)")
fi

evaluate_paths() {  # the shipped model's AP through each inference path, against its record
  for speed in plain exact fast; do
    $B/python -m rtmdet_lesson evaluate --checkpoint data/course-sprites.pth --data data/sprites --speed "$speed" \
      --device cuda --json | tail -1 > "$tmp/ap-$speed.json" || return 1
  done
  $B/python - "$tmp" <<'PY'
import json, sys
record = json.load(open("data/course-sprites.json"))
for speed in ("plain", "exact", "fast"):
    got = json.load(open(f"{sys.argv[1]}/ap-{speed}.json"))
    print(f"{speed:<6} bbox AP {got['bbox_AP']:.3f} segm AP {got['segm_AP']:.3f} "
          f"(record {record['bbox_AP']:.3f} / {record['segm_AP']:.3f})")
    assert abs(got["bbox_AP"] - record["bbox_AP"]) <= 0.01 and abs(got["segm_AP"] - record["segm_AP"]) <= 0.01
PY
}
check evaluate-plain-exact-fast evaluate_paths

if [ "$($B/python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  ddp() {  # a two-GPU run, its resume, and --save-interval 2 with an evaluation every epoch
    local run="$B/torchrun --standalone --nproc_per_node=2 -m rtmdet_lesson train course-sprites --data data/sprites
      --batch-size 16 --fast --workers 2 --set eval_interval=1 --set progress=false"
    timeout 300 $run --out "$tmp/ddp" --epochs 2 --max-iters 40 || return 1
    timeout 300 $B/torchrun --standalone --nproc_per_node=2 -m rtmdet_lesson train --resume "$tmp/ddp/last.pth" \
      --max-iters 60 --set progress=false || return 1
    timeout 300 $run --out "$tmp/ddp-save" --epochs 2 --set save_interval=2 || { echo "save-interval 2: exit $?"; return 1; }
  }
  check ddp-two-gpus ddp
else
  summary+=("SKIP  ddp-two-gpus: one GPU")
fi

echo
printf '%s\n' "${summary[@]}"
echo "logs in $tmp"
exit $((failures > 0))
