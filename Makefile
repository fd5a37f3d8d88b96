# Set-up and everyday commands. `make demo` and `make test` run `make setup` first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The Slicer-like environment: Slicer 5.12's Python (3.12) and bundled packages, then what the module installs on
# first use, in its order (README, "Supported Slicer releases").
SLICER_PYTHON ?= PYENV_VERSION=3.12.1 python3.12
SLICER_VENV := .venv-slicer
SLICER_PY := $(SLICER_VENV)/bin/python
SLICER_STAMP := $(SLICER_VENV)/.installed
SLICER_BUNDLE := Testing/environments/slicer-5.12.txt
MODULE_REQUIREMENTS := BrainTumorFusion/Resources/requirements-slicer.txt
DEPENDENCIES := BrainTumorFusion/BrainTumorFusionLib/app/dependencies.py
SKULL_STRIPPING := BrainTumorFusion/BrainTumorFusionLib/preparation/skull_stripping.py
CASE ?= ../shared/data/brats/Brats18_CBICA_ABM_1
MODEL ?= hafb
DEMO_DIR := out/demo

.PHONY: setup setup-slicer lint test test-dev test-slicer demo bench-zoo bench bench-training gpu-check clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

# torch as the PyTorch extension installs it (the newest release dependencies.TORCH_REQUIREMENT admits; from PyPI,
# so a CUDA build of about 4 GB), then the module's pinned packages and deepbet as its first use installs them.
setup-slicer: $(SLICER_STAMP)

$(SLICER_STAMP): $(SLICER_BUNDLE) $(MODULE_REQUIREMENTS) $(DEPENDENCIES) $(SKULL_STRIPPING) pyproject.toml
	test -x $(SLICER_PY) || $(SLICER_PYTHON) -m venv $(SLICER_VENV)
	$(SLICER_PY) -m pip install --quiet --upgrade pip
	$(SLICER_PY) -m pip install --quiet -r $(SLICER_BUNDLE)
	$(SLICER_PY) -m pip install --quiet "torch$$(sed -n 's/^TORCH_REQUIREMENT = "\(.*\)"/\1/p' $(DEPENDENCIES))"
	$(SLICER_PY) -m pip install --quiet -r $(MODULE_REQUIREMENTS)
	$(SLICER_PY) -m pip install --quiet "$$(sed -n 's/^DEEPBET_REQUIREMENT = "\(.*\)"/\1/p' $(SKULL_STRIPPING))"
	$(SLICER_PY) -m pip install --quiet --no-deps -e .
	$(SLICER_PY) -m pip check
	touch $(SLICER_STAMP)

# The linter, then the whole suite in both environments (what CI runs). One torch thread per test process: the
# suite's small tensors run faster without intra-op threading on 2 cores.
test: lint test-dev test-slicer

lint: setup
	$(VENV)/bin/ruff check .

test-dev: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest

# Tests that need a package of the development venv only (Training's panoptica, pydeface's head) are skipped
# here, each saying which package; in the development venv a missing one is an error (Testing/conftest.py).
test-slicer: setup-slicer
	OMP_NUM_THREADS=1 BTF_SLICER_ENVIRONMENT=1 $(SLICER_PY) -m pytest

# Segments one real case (CASE=folder) with the shipped default model into out/demo/.
demo: setup
	rm -rf $(DEMO_DIR)/input && mkdir -p $(DEMO_DIR)/input
	ln -s "$(abspath $(CASE))" $(DEMO_DIR)/input/
	$(PY) -m BrainTumorFusionLib segment --input-dir $(DEMO_DIR)/input --output-dir $(DEMO_DIR)/output --model $(MODEL)

bench-zoo: setup
	$(PY) Testing/benchmarks/bench_zoo.py

# Every shipped model and the ensemble as whole processes (batch and predict), fp32 against auto, peak RSS, and the
# MONAI SegResNet sliding-window anchor in the same run. About 15 minutes; run it on an idle machine.
bench: setup
	test -x .venv-runtime/bin/python || $(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/pip install --quiet -r requirements.txt && .venv-runtime/bin/pip install --quiet --no-deps -e .
	$(PY) Testing/benchmarks/bench.py --runtime-python .venv-runtime/bin/python

# Seconds per training step of the shared loop: as the shipped models were trained against the loop's defaults.
bench-training: setup
	$(PY) Testing/benchmarks/bench_training.py

# On a CUDA machine: every shipped model, the OOM fallback and 200 training steps against CPU references, one table.
# The cache (out/gpu_check) is made here from ../shared when missing; carry it to a GPU machine (see docs/architecture.md, Tests).
gpu-check: setup
	test -f out/gpu_check/manifest.json || $(PY) tools/gpu_check.py prepare --out out/gpu_check
	$(PY) tools/gpu_check.py run --cache out/gpu_check

clean:
	rm -rf $(VENV) $(SLICER_VENV) .venv-runtime out .pytest_cache
