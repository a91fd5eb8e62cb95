# aml-identity developer commands. `make demo` and `make test` work on a fresh machine with Python 3.10+,
# Node.js 18+ and npm: they create .venv and node_modules themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

.PHONY: setup demo test lint typecheck pytest bench examples docs docs-build troubleshooting clean

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

# Everything CI checks: lint, types, the documentation site, then the test suite (which also runs the examples
# and every sample of the documentation).
test: lint typecheck docs-build pytest

# The documentation site: `make docs` serves it on http://127.0.0.1:8000; docs-build fails on any warning.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

docs-build: $(STAMP_PY)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(VENV)/site

# docs/troubleshooting.md is generated from src/aml_identity/errors.py (tests/test_troubleshooting.py checks it).
troubleshooting: $(STAMP_PY)
	$(PY) tests/test_troubleshooting.py

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
