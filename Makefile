# One command each: `make run` sets up and starts the server, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test check lint typecheck protos protos-check buf-lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/memsched serve $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

check: lint typecheck protos-check buf-lint

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

protos: setup
	$(BIN)/python tools/gen_protos.py

protos-check: setup
	$(BIN)/python tools/gen_protos.py --check

buf-lint: setup
	$(BIN)/buf lint

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
