# aml-identity developer commands. `make demo` and `make test` work on a fresh machine with Python 3.10+,
# Node.js 18+ and npm: they create .venv and node_modules themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

.PHONY: setup demo test lint typecheck pytest bench examples docs docs-build clean

setup: $(STAMP_PY) $(STAMP_NODE)

$(STAMP_PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -m pip install --quiet -e . --group dev --group docs
	touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The main demo: an example training job, end to end against the emulators and Azurite: it resolves its
# azureml:// datastores through the ARM emulator, downloads its data once per node for 4 ranks, and uploads its
# outputs on exit, with the identity's storage role enforced.
demo: setup
	$(VENV)/bin/aml-identity sandbox --arm --datastore training_data=examples/data --datastore outputs -- $(PY) examples/data_job.py

# Everything CI checks: lint, types, then the test suite (which also runs the examples).
test: lint typecheck pytest

lint: $(STAMP_PY)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

typecheck: $(STAMP_PY)
	$(VENV)/bin/mypy

pytest: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache
