# The two commands a new user needs: `make demo` (main job) and `make test` (the test suite).
# Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The demo's packages (torch for its export check), and the tests' (pytest, and libtpu to compile for TPU slices).
# pip installs without byte-compiling (its 19,000 files took 74 s of a 107 s install); the commands below let Python
# cache the bytecode of the modules they import as they go (PYTHONDONTWRITEBYTECODE, if the machine sets it, would
# make every process compile its imports again).
$(VENV)/.demo: setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -e '.[demo]'
	touch $@

$(VENV)/.test: setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -e '.[test]'
	touch $@ $(VENV)/.demo

.PHONY: setup demo test bench
setup: $(VENV)/.test

demo: $(VENV)/.demo
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m omnijax.demo --workdir workdirs/demo

test: $(VENV)/.test
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n 2 --dist loadfile -q tests

bench: $(VENV)/.demo
	PYTHONDONTWRITEBYTECODE= $(BIN)/python benchmarks/llm_train_step.py
