# Two entry points: `make run` (the quickstart: a federated run on the embedded synthetic
# data) and `make test` (the whole suite). Both create the venv and install on first use.
# `make docs` regenerates the README's quickstart output from the code.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedhar experiment=quickstart $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -m 'e2e or not e2e' $(PYTEST_ARGS)

docs: $(STAMP)  # the README's quickstart output and plots, from a fresh quickstart run
	$(BIN)/python -m experiments.readme

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
