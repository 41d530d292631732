# vitscale: every target sets up what it needs first (venv, pinned packages, data, kernel).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup data malloc browser slurm strace demo sweep test test-fast test-long test-bench lint lab tensorboard bench bench-throughput bench-run-costs clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet -e '.[test]' 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import vitscale, jax, flax, optax, orbax.checkpoint, tensorflow_datasets, papermill, plotly"
	$(VENV)/bin/vitscale kernel
	touch $(STAMP)

setup: $(STAMP) data malloc

# Python that runs with jemalloc keeping freed pages (lib/vitscale/allocator.py: 1.2-1.7x faster
# training steps on a CPU); the vitscale kernel starts the same way.
RUN := $(PY) -m vitscale.allocator $(PY)

# System packages that some tests need: as root (CI) `make` installs them, so every test runs; as another user
# a missing one is named here, and the tests that need it skip with that reason (pytest -rs lists them).

# Real data that installs offline: Fashion-MNIST's IDX files from Debian (`make demo` needs them).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "note: Fashion-MNIST is not installed ('sudo apt-get install dataset-fashion-mnist'): the tests that need it skip, saying so"; fi

# jemalloc for XLA's per-step buffers (optional: without it everything runs, with glibc's malloc).
malloc:
	@if [ -n "$$($(PY) -c 'from vitscale import allocator; print(allocator.find_jemalloc() or "")')" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then apt-get update -qq && apt-get install -y -qq libjemalloc2; \
	else echo "note: jemalloc is missing ('sudo apt-get install libjemalloc2' or 'conda install -c conda-forge jemalloc'); CPU training steps run 1.2-1.7x slower without it"; fi

# SLURM's sbatch (no controller) for the test that checks the generated job scripts.
slurm:
	@if command -v sbatch > /dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq slurm-client; \
	else echo "note: sbatch is not installed ('sudo apt-get install slurm-client'): the tests that need it skip, saying so"; fi

# strace for the fault suite's no-network test (it records every connect() a run attempts).
strace:
	@if command -v strace > /dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq strace; \
	else echo "note: strace is not installed ('sudo apt-get install strace'): the tests that need it skip, saying so"; fi

# Headless Chromium for the report-rendering test.
browser:
	@if command -v chromium > /dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	else echo "note: chromium is not installed ('sudo apt-get install chromium'): the tests that need it skip, saying so"; fi

# A ViT pretrained on Fashion-MNIST (outputs/demo/run.html), then an 8-run slice (muP, a 2-rate search) of the CPU scaling
# sweep with its analysis (outputs/cpu_scaling_slice/scaling/report.html). Two runs at a time: a run of these
# small models keeps about one core busy, and one at a time the 8 runs made the demo 6.5% slower than the 4 of before.
demo: setup
	$(VENV)/bin/vitscale run parameters/pretrain/demo.yaml
	$(VENV)/bin/vitscale sweep parameters/sweeps/cpu_scaling_slice.yaml --workers 2

# The full CPU scaling study (73 minutes on 2 cores, docs/results.md) and its report.
sweep: setup
	$(VENV)/bin/vitscale sweep parameters/sweeps/cpu_scaling.yaml

# One formatter and linter (settings in pyproject.toml); `make test` fails on any finding.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .

# The whole suite (what CI runs). It installs the bench extra (torch, timm: wheels on local disk) for the
# tests that load vitscale's .npz files with timm (tests/test_weights.py); without it they skip, saying so.
test: setup browser slurm strace lint
	$(PY) -m pip install --quiet -e '.[bench]' 2>&1 | grep -v "is ignored" || true
	$(RUN) -m pytest -q -rs -m "not bench and not long" --durations=20

# The end-to-end scenarios left out of `make test` to keep it under 15 minutes (faults with several fresh
# processes, a planned sweep, the VTAB protocol on stand-ins, submitit jobs, a killed sweep and its rerun,
# the kill-and-resume, Ctrl-C and SIGTERM restarts, bf16 against f32 over 300 steps, the compile-cache
# benchmark's two processes, JupyterLab driven in Chromium, the wheel built, installed into a fresh venv
# and run in a new study folder); CI runs them after `make test`.
test-long: setup browser slurm strace
	$(RUN) -m pytest -q -rs -m long --durations=10

# Smoke tests of the benchmarks that `make bench-run-costs` runs for real (88 s: three fresh processes).
test-bench: setup
	$(RUN) -m pytest -q -m bench

# The edit loop: every module's unit tests, no notebooks, no spawned processes, no long training.
test-fast: setup lint
	$(RUN) -m pytest -q -rs -m "not slow and not bench and not long"

# JupyterLab on notebooks/ with the vitscale kernel; as root it says so and passes --allow-root.
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
lab: setup
	$(VENV)/bin/vitscale lab --ip $(LAB_IP) --port $(LAB_PORT)

# TensorBoard over run folders (each run writes event files beside metrics.jsonl): LOGDIR=outputs/<sweep>.
LOGDIR ?= outputs
HOST ?= 127.0.0.1
TB_PORT ?= 6006
tensorboard: setup
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host $(HOST) --port $(TB_PORT)

bench: setup
	$(RUN) benchmarks/optimizer_memory.py

# What a run spends besides the step: input pipeline, compilation (cache on/off), papermill per run.
bench-run-costs: setup
	$(RUN) benchmarks/input_pipeline.py
	$(RUN) benchmarks/compile_cache.py
	$(RUN) benchmarks/run_overhead.py

# vitscale vs timm (eager PyTorch) vs plain Flax, one training step per shape (installs the bench extra).
bench-throughput: setup
	$(PY) -m pip install --quiet -e '.[bench]' 2>&1 | grep -v "is ignored" || true
	$(RUN) benchmarks/train_throughput.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
