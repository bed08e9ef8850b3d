# Every target sets up .venv first, so `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A CPU build of torch lies on this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup test lint typecheck pytest demo bench gpu-check docs build clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# pytorch-fairloss 0.1.1, for parity tests and benchmarks only: it also imports as
	# `fairloss`, so it is downloaded, never installed, and loaded under another name.
	$(BIN)/python -m pip download --quiet --no-deps --dest $(VENV)/old-release pytorch-fairloss==0.1.1
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check src tests examples benchmarks docs
	$(BIN)/ruff format --check src tests examples benchmarks docs
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q

test: lint pytest

demo: setup
	$(BIN)/fairloss compare

bench: setup
	$(BIN)/python -m benchmarks.run

gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check

docs: setup
	$(BIN)/mkdocs build --strict

build: setup
	rm -rf dist
	$(BIN)/python -m build
	$(BIN)/twine check dist/*

clean:
	rm -rf $(VENV) dist build site .pytest_cache .mypy_cache .ruff_cache .hypothesis
