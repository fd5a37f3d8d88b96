# Set-up and everyday commands. `make demo` and `make test` run `make setup` first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CASE ?= ../shared/data/brats/Brats18_CBICA_ABM_1
MODEL ?= hafb
DEMO_DIR := out/demo

.PHONY: setup test demo bench-zoo bench bench-training gpu-check clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

# One torch thread per test process: the suite's small tensors run faster without intra-op threading on 2 cores.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest

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
# The cache (out/gpu_check) is made here from ../shared when missing; carry it to a GPU machine (see README).
gpu-check: setup
	test -f out/gpu_check/manifest.json || $(PY) Testing/benchmarks/gpu_check.py prepare --out out/gpu_check
	$(PY) Testing/benchmarks/gpu_check.py run --cache out/gpu_check

clean:
	rm -rf $(VENV) .venv-runtime out .pytest_cache
