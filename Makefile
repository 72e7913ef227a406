# One entry point for people and CI. `make test` and `make run` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run demo test lint types pytest bench clean

$(BIN)/numbers-retention: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/numbers-retention

run: install
	$(BIN)/numbers-retention seed-demo --numbers 1000 --accounts 10 --if-empty
	$(BIN)/numbers-retention run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest --cov --cov-report=term:skip-covered

test: lint types pytest

bench: install
	$(BIN)/python bench/purge.py --rows 1000000
	$(BIN)/python bench/list.py
	$(BIN)/python bench/publish.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .coverage
