# Two commands do all the set-up on a fresh machine:
#   make demo   - install ghetl in .venv, start the bundled GitHub sandbox, sync a tenant into SQLite
#   make test   - install ghetl with its test and semantic extras, start PostgreSQL and RabbitMQ, run ruff, mypy
#                 and pytest (`make lint`: ruff and mypy alone)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.base: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[notebooks]'
	touch $@

$(VENV)/.test: $(VENV)/.base
	scripts/install-test-deps.sh $(BIN)
	touch $@

demo: $(VENV)/.base
	PATH="$(abspath $(BIN)):$$PATH" scripts/demo.sh

services:
	scripts/services.sh

test: $(VENV)/.test lint services
	$(BIN)/pytest

lint: $(VENV)/.test
	$(BIN)/ruff check ghetl tests benchmarks
	$(BIN)/mypy ghetl

clean:
	rm -rf $(VENV) data/*.db data/*.db-* artifacts
