# Every target sets up .venv first, so `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A CPU build of torch lies on this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup test lint typecheck pytest demo study bench gpu-check docs docs-check build clean

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
	$(BIN)/ruff check src experiments tests examples benchmarks docs
	$(BIN)/ruff format --check src experiments tests examples benchmarks docs
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q

test: lint pytest

# The experiment harness lives in experiments/ (repository tooling, not installed): run from here.
demo: setup
	$(BIN)/python -m experiments compare

# The grid behind docs/evidence.md: 2160 small runs on 2 worker processes, 31 minutes on 2 cores
# shared with other work. Resumable: runs already in results/study/runs.jsonl are skipped
# (`$(BIN)/python -m experiments study --fresh` starts over; `--core-grid` runs 1440 of them).
study: setup
	$(BIN)/python -m experiments study

bench: setup
	$(BIN)/python -m benchmarks.run

gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check

# MathJax is served with the site (no CDN): its npm package, unpacked into docs/ (git-ignored).
MATHJAX_VERSION := 3.2.2
MATHJAX := docs/javascripts/mathjax/tex-mml-chtml.js

$(MATHJAX):
	rm -rf $(VENV)/mathjax-pack docs/javascripts/mathjax
	mkdir -p $(VENV)/mathjax-pack docs/javascripts/mathjax/output/chtml
	cd $(VENV)/mathjax-pack && npm pack --silent mathjax@$(MATHJAX_VERSION) > /dev/null
	tar -xzf $(VENV)/mathjax-pack/mathjax-$(MATHJAX_VERSION).tgz -C $(VENV)/mathjax-pack
	cp $(VENV)/mathjax-pack/package/es5/tex-mml-chtml.js docs/javascripts/mathjax/
	cp -r $(VENV)/mathjax-pack/package/es5/output/chtml/fonts docs/javascripts/mathjax/output/chtml/
	cp $(VENV)/mathjax-pack/package/LICENSE docs/javascripts/mathjax/

docs: setup $(MATHJAX)
	$(BIN)/mkdocs build --strict

# The built site in headless Chromium, from localhost: every formula rendered, no page error.
docs-check: docs
	$(BIN)/python docs/_tools/check_in_browser.py site

build: setup
	rm -rf dist
	$(BIN)/python -m build
	$(BIN)/twine check dist/*

clean:
	rm -rf $(VENV) dist build site .pytest_cache .mypy_cache .ruff_cache .hypothesis
