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
DEMO_BACKEND ?= tensorflow

.PHONY: install demo test test-tensorflow test-jax-torch test-recipes test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel (a bare `torch` pulls CUDA).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[tensorflow,jax,torch,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	KERAS_BACKEND=$(DEMO_BACKEND) $(VENV)/bin/kertransfer demo --out runs/demo

# Unit tests on all three backends, the end-to-end tests once (TensorFlow).
# Each pytest keeps about one core busy, so on a 2-core machine two run at
# once: the TensorFlow pass beside the JAX and torch unit tests, then the
# recipe smoke runs. `--output-sync` keeps each pass's report in one piece.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
test: install
	$(MAKE) --no-print-directory -j2 --output-sync=target test-tensorflow test-jax-torch test-recipes

test-tensorflow: install
	KERAS_BACKEND=tensorflow $(PYTEST) --ignore=tests/test_recipes.py tests

test-jax-torch: install
	KERAS_BACKEND=jax $(PYTEST) -m "not slow and not one_backend" tests
	KERAS_BACKEND=torch $(PYTEST) -m "not slow and not one_backend" tests

test-recipes: install
	KERAS_BACKEND=tensorflow $(PYTEST) tests/test_recipes.py

test-fast: install
	KERAS_BACKEND=tensorflow $(PYTEST) -m "not slow" tests

clean:
	rm -rf $(VENV) .keras-home runs .pytest_cache
