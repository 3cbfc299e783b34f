# The two commands of the README:
#   make run          Dagster UI + daemon on the TWIML feed  (make run DEMO=1: offline demo feed)
#   make test         the whole test suite, slow end-to-end tests included
# Both do their own set-up (system packages, venv, offline weights) on a fresh machine.
.PHONY: setup lock run web test test-fast test-portable lint bench

VENV ?= .venv
PY := $(VENV)/bin/python

setup:
	bash scripts/setup.sh

# Re-resolve uv.lock from pyproject.toml (newest versions its ranges allow); commit both.
lock:
	bash scripts/setup.sh --lock

# exec: a SIGTERM to make goes to its child, which must be run.sh itself (it stops Dagster);
# an intermediate /bin/sh would die of it alone and leave everything running.
run: setup
	DEMO=$(DEMO) exec bash scripts/run.sh

web: setup
	$(VENV)/bin/twiml-transcribe web

# pytest-xdist: TEST_WORKERS workers (0: serial), a test file each (module fixtures made once),
# longest files first (tests/conftest.py). 3 on 2 cores: much of the suite waits on
# Dagster's daemon, servers and timers, so one more worker than cores keeps both busy.
TEST_WORKERS ?= 3
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: setup
	$(PY) -m pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS)

# The model-output tests (marker model_output) natively and under other CPUs' kernels
# (tests/model_output.py: PORTABILITY_SETTINGS); about 25 minutes on 2 cores (native 6, avx2 6, sse41 12).
test-portable: setup
	$(PY) -m tests.model_output $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/engine.py
