# ledgergate: every target installs what it needs first, so a fresh clone needs only `make test`
# or `make demo`. Settings come from LEDGERGATE_* environment variables (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser up down status topics test test-unit lint typecheck demo bench client-wheel clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Debian's chromium, for the dashboard's browser test (tests/e2e/test_dashboard.py drives it with Playwright's
# Python API; `playwright install` is never run: it downloads browsers). Skipped when it is installed.
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

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

# ruff, then mypy over shared/, services/, tools/ and the public package (tools/typecheck.py).
lint: install
	$(BIN)/ruff check .
	$(BIN)/python -m ledgergate.tools.typecheck

typecheck: install
	$(BIN)/python -m ledgergate.tools.typecheck

test-unit: install
	$(BIN)/pytest tests/unit -q

test: up lint browser
	$(BIN)/pytest -q -p no:cacheprovider --durations=25

demo: up
	$(BIN)/ledgergate demo

bench: up
	$(BIN)/ledgergate bench

# The public package alone (`pip install dist/ledgergate-*.whl` in an agent app): confluent-kafka and fastavro.
client-wheel: install
	rm -rf client/build client/*.egg-info
	$(BIN)/pip wheel -q --no-deps -w dist ./client
	rm -rf client/build client/*.egg-info

# Stops the stack and deletes the data directory it uses (LEDGERGATE_DATA_DIR, default .data).
clean: install
	$(BIN)/ledgergate stack clean
