# The two commands a new user needs: `make demo` (main job) and `make test` (the test suite).
# Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The demo's packages (torch for its export check), and the tests' (pytest, and libtpu to compile for TPU slices).
$(VENV)/.demo: setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test: setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.demo

.PHONY: setup demo test bench
setup: $(VENV)/.test

demo: $(VENV)/.demo
	$(BIN)/python -m omnijax.demo --workdir workdirs/demo

test: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

bench: $(VENV)/.demo
	$(BIN)/python benchmarks/llm_train_step.py
