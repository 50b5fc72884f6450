# Two entry points for a fresh machine with Python 3.11+:
#   make demo   installs the library with the embedded local AWS and runs the demo
#   make test   installs everything the tests need and runs lint, types and tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-localstack lint typecheck pytest bench clean

# The second emulator (LocalStack for SQS and S3; DynamoDB stays on moto) runs
# in its own venv: localstack-core pins an older botocore than aiobotocore
# allows, and needs Python 3.13+. Found on PATH or in pyenv, or set it.
LOCALSTACK_PYTHON ?= $(shell for p in python3.13 python3.14 $(wildcard $(HOME)/.pyenv/versions/3.1[3-9]*/bin/python3) \
	$(wildcard /root/.pyenv/versions/3.1[3-9]*/bin/python3); do \
	"$$p" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null && { echo "$$p"; break; }; done)
LSVENV := .venv-localstack
# The SQS and S3 behaviour tests; the rest (moto patches, DynamoDB-only, CLI) need moto alone.
LOCALSTACK_TESTS := tests/test_queue_conformance.py tests/test_messages.py tests/test_batch.py \
	tests/test_lambda.py tests/test_lambda_adapter.py tests/test_clusters.py tests/test_globals.py \
	tests/test_payloads.py tests/test_dead_letters.py tests/test_worker.py tests/test_uri_queues.py \
	tests/test_peers.py tests/test_isolation.py

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

$(LSVENV)/.created: tests/localstack-requirements.txt
	@test -n "$(LOCALSTACK_PYTHON)" || { echo "test-localstack needs Python 3.13+: set LOCALSTACK_PYTHON=/path/to/python3.13"; exit 1; }
	rm -rf $(LSVENV)
	$(LOCALSTACK_PYTHON) -m venv $(LSVENV)
	$(LSVENV)/bin/python -m pip install --quiet --no-deps -r tests/localstack-requirements.txt
	touch $@

test-localstack: $(VENV)/.dev $(LSVENV)/.created
	MSGCLUSTER_TEST_EMULATOR=localstack MSGCLUSTER_LOCALSTACK_PYTHON=$(LSVENV)/bin/python \
		$(PY) -m pytest -k "not memory and not dynamodb" $(LOCALSTACK_TESTS)

bench: $(VENV)/.dev
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(LSVENV) .mypy_cache .ruff_cache .pytest_cache
