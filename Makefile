# ledgergate: every target installs what it needs first, so a fresh clone needs only `make test`
# or `make demo`. Settings come from LEDGERGATE_* environment variables (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up down status topics test test-unit lint demo bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

up: install
	$(BIN)/ledgergate stack up
	$(BIN)/ledgergate topics apply >/dev/null
	$(BIN)/ledgergate db migrate

down: install
	$(BIN)/ledgergate stack down

status: install
	$(BIN)/ledgergate stack status

topics: install
	$(BIN)/ledgergate topics apply

lint: install
	$(BIN)/ruff check .

test-unit: install
	$(BIN)/pytest tests/unit -q

test: up lint
	$(BIN)/pytest -q -p no:cacheprovider

demo: up
	$(BIN)/ledgergate demo

bench: up
	$(BIN)/ledgergate bench

# Stops the stack and deletes the data directory it uses (LEDGERGATE_DATA_DIR, default .data).
clean: install
	$(BIN)/ledgergate stack clean
