# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and install filterlens into it (idempotent:
# the stamp file makes the second call a no-op unless pyproject.toml changed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.filterlens-installed

.PHONY: setup demo lint test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision first, on their own: pip resolves them from the local
	# wheel cache here (capped at torch 2.14.1 / torchvision 0.29.1).
	$(PY) -m pip install --quiet "torch>=2.1" "torchvision>=0.16"
	$(PY) -m pip install --quiet -e ".[timm,test]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/filterlens demo

# ruff under pyproject.toml's [tool.ruff] settings (pyflakes, pycodestyle, import order, 120 columns)
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# the default run (under 10 minutes on 2 cores); the slow tests (marked `slow`) run in their own CI step
test: setup
	$(PY) -m pytest -q -n 2 -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -n 2 -m slow

bench: setup
	$(PY) benchmarks/probe_engine.py --quick

clean:
	rm -rf $(VENV) runs build src/*.egg-info
