# Two entry points for a fresh machine with Python 3.11+:
#   make demo   installs the library with the embedded local AWS and runs the demo
#   make test   installs everything the tests need and runs lint, types and tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test lint typecheck pytest bench clean

$(VENV)/.created:
	$(PYTHON) -c 'import sys; sys.exit("msgcluster needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.demo: $(VENV)/.created pyproject.toml
	$(PY) -m pip install --quiet -e '.[local]'
	touch $@

$(VENV)/.dev: $(VENV)/.created pyproject.toml
	$(PY) -m pip install --quiet -e '.[local,dev]'
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(PY) -m msgcluster.demo

lint: $(VENV)/.dev
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

typecheck: $(VENV)/.dev
	$(PY) -m mypy src

pytest: $(VENV)/.dev
	$(PY) -m pytest

test: lint typecheck pytest

bench: $(VENV)/.dev
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
