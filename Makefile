# The two commands a new user needs: `make demo` (main job) and `make test` (the test suite).
# Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/activate: setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/activate

.PHONY: setup demo test bench
setup: $(BIN)/activate

demo: setup
	$(BIN)/python -m omnijax.demo --workdir workdirs/demo

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

bench: setup
	$(BIN)/python benchmarks/llm_train_step.py
