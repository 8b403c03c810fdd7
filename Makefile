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

test: install-test
	$(BIN)/python -m pytest -n 2 --durations=15 tests

clean:
	rm -rf $(VENV) runs
