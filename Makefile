# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and install filterlens into it (idempotent:
# the stamp file makes the second call a no-op unless pyproject.toml changed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.filterlens-installed

.PHONY: setup demo lint typecheck test test-slow bench docs clean

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

# mypy under pyproject.toml's [tool.mypy] settings (the package, src/filterlens)
typecheck: setup
	$(VENV)/bin/mypy

# the default run (under 10 minutes on 2 cores); the slow tests (marked `slow`) run in their own CI step
test: setup
	$(PY) -m pytest -q -n 2 -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -n 2 -m slow

bench: setup
	$(PY) benchmarks/probe_engine.py --quick

# the API reference from the docstrings (pdoc, the `docs` extra, installed on first use) into build/api/ (ignored by
# git; open build/api/index.html). pdoc follows only the submodules a package's __all__ names, so every module is
# named, as a path (this tree's src/ goes first on sys.path); __main__ is left out (importing it runs the command),
# and the warning for a module named twice (a package's __all__ names it too) is silenced
API_MODULES := src/filterlens $(patsubst %/__init__.py,%,$(wildcard src/filterlens/*/__init__.py)) \
	$(filter-out %/__init__.py %/__main__.py,$(wildcard src/filterlens/*.py src/filterlens/*/*.py))
docs: setup
	$(PY) -c "import pdoc" 2>/dev/null || $(PY) -m pip install --quiet -e ".[docs]"
	rm -rf build/api
	$(PY) -W "ignore:The module specification" -m pdoc --docformat numpy -t docs/pdoc \
		--footer-text "filterlens API reference" -o build/api $(API_MODULES)

clean:
	rm -rf $(VENV) runs build src/*.egg-info
