# Two commands: `make lab` runs the course (JupyterLab at the root: exercises/ and notebooks/), `make test` runs every test. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPRITES := data/sprites/val/annotations.json

.PHONY: lab test gpu-check setup data clean

lab: setup data
	$(BIN)/jupyter lab

test: setup data
	$(BIN)/ruff check rtmdet_lesson tests benchmarks
	RTMDET_LESSON_FAST=1 TQDM_DISABLE=1 $(BIN)/pytest tests
	RTMDET_LESSON_FAST=1 TQDM_DISABLE=1 $(BIN)/pytest --nbval --nbval-current-env \
		--nbval-cell-timeout=300 --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks

# On a machine with CUDA GPUs: the checks the CPU suite cannot make (tools/gpu_check.sh says which), ~10 minutes.
gpu-check:
	bash tools/gpu_check.sh

setup: $(VENV)/.installed

# torch==2.13.0 goes in first so that the package's `torch>=2.1` is already met and pip pulls no CUDA build.
# A GPU user can install their own torch into .venv before running make.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

data: $(SPRITES)

$(SPRITES): | setup
	$(BIN)/python -m rtmdet_lesson data sprites --out data/sprites

clean:
	rm -rf $(VENV) data/sprites
