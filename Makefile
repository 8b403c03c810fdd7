# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make run    create .venv, install mbrlax, run PETS with its defaults on pendulum
#   make test   create .venv, install mbrlax with the test extra, run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"

run: install
	$(BIN)/python algorithms/pets.py --env pendulum

# The tests in two sessions: first all but the long programs with XLA's slow CPU optimisations off
# (they compile small programs and run them briefly, and compile two to three times faster so), then
# the long programs (`slow`: learning tests, pixel runs) and the claims about XLA's own rounding, with
# XLA's defaults.
FAST_COMPILE := --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true
FAST_COMPILE += --xla_cpu_use_fusion_emitters=false

test: install-test
	XLA_FLAGS="$(FAST_COMPILE) $$XLA_FLAGS" \
		$(BIN)/python -m pytest -n 2 --durations=15 -m "not slow and not xla_defaults" tests
	$(BIN)/python -m pytest -n 2 --durations=15 -m "slow or xla_defaults" tests

clean:
	rm -rf $(VENV) runs
