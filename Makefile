# Two entry points (see README): `make reproduce` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data reproduce test lint bench-perf clean-venv

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,faiss,dask]"
	touch $(STAMP)

data:
	@if [ -f "$(FMNIST)" ] || [ -n "$$BENCH_DATA" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update >/dev/null && apt-get install -y dataset-fashion-mnist >/dev/null); \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install -y dataset-fashion-mnist' (or set BENCH_DATA)"; \
	  exit 2; \
	fi

# JOBS parallel runs (one torch thread each when JOBS = cores); RUN_FLAGS=--force retrains
# runs whose records are already committed under results/.
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
RUN_FLAGS ?=

reproduce: setup
	$(PY) -m bench run --experiment main-table --jobs $(JOBS) $(RUN_FLAGS)
	$(PY) -m bench report

test: setup
	$(VENV)/bin/ruff check bench methods tests
	$(PY) -m pytest -q
	$(PY) -m bench check

bench-perf: setup
	$(PY) -m bench perf evaluator
	$(PY) -m bench perf loop
