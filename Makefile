# kvstate: `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Public benchmark files (kvstate.data.public) are read from KVSTATE_DATA, never committed: in
# development and CI they sit in ../shared/benchmarks when that folder exists.
ifneq ($(wildcard ../shared/benchmarks),)
export KVSTATE_DATA ?= $(realpath ../shared/benchmarks)
endif

.PHONY: install lint demo test test-fast bench bench-full clean

$(BIN)/kvstate: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,ray,serve]'
	touch $(BIN)/kvstate

install: $(BIN)/kvstate

demo: install
	$(BIN)/kvstate demo

lint: install
	$(BIN)/ruff check src tests benchmarks results
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q -ra

test-fast: install
	$(BIN)/pytest -q -ra -m "not slow"

bench: install
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python benchmarks/run.py --quick

bench-full: install
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build src/*.egg-info
