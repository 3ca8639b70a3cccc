# mss: the two commands are `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install sysdeps check run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# System packages the test suite talks to (PostgreSQL, openssl, swaks, Chromium, Postfix, npm ...).
sysdeps:
	@bash tests/sysdeps.sh

# What the browser tests inject into the pages: axe-core (accessibility), pinned in
# tests/package-lock.json, installed from the npm registry into tests/node_modules.
AXE := tests/node_modules/axe-core/axe.min.js
$(AXE): tests/package.json tests/package-lock.json
	npm ci --prefix tests --no-audit --no-fund --loglevel=error
	touch $@

# Development PKI and demo data on first run, then the service.
run: install
	$(BIN)/mss pki init --if-missing
	$(BIN)/mss demo --if-empty
	$(BIN)/mss serve

# Lint, formatting and types (configured in pyproject.toml): what keeps the code in shape.
check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The checks, then the whole suite on SQLite and on a throw-away PostgreSQL on loopback.
test: install sysdeps $(AXE) check
	@bash tests/run-suite.sh $(BIN)/python

# Each benchmark compares against a baseline measured in the same run and prints the ratio;
# bench/README.md records the figures.
bench: install sysdeps
	$(BIN)/python bench/bench_crypto.py
	$(BIN)/python bench/bench_directory.py
	$(BIN)/python bench/bench_relay.py
	$(BIN)/python bench/bench_dsn.py
	$(BIN)/python bench/bench_mime.py
	$(BIN)/python bench/bench_data_reader.py
	$(BIN)/python bench/bench_data_slots.py
	$(BIN)/python bench/bench_web.py
	$(BIN)/python bench/bench_hostile.py
	$(BIN)/python bench/bench_federation.py
	$(BIN)/python bench/bench_imap.py --messages 2000  # needs isync and dovecot-imapd

clean:
	rm -rf $(VENV) var tests/node_modules
