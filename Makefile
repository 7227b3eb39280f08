# payment-service developer targets. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: venv test test-unit lint dev system-deps

venv: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when setup.cfg changed since the last install.
$(VENV)/.installed: setup.cfg | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $@

system-deps:
	scripts/install-system-deps.sh

lint: venv
	$(BIN)/ruff check payment_service tests bench
	$(BIN)/mypy payment_service

test: venv system-deps lint
	$(BIN)/pytest -q -p no:cacheprovider -ra

# The fast lane: fakes only, no I/O, no servers started (docs/testing.md); under 30 s.
test-unit: venv
	$(BIN)/pytest -q -p no:cacheprovider -m unit

dev: venv
	$(BIN)/payment-service dev
