# The two commands of the README: `make demo` (the main job) and `make test`.
# Each one prepares the machine first (scripts/bootstrap.sh: Debian packages, .venv).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test lint demo bench clean

setup:
	@scripts/bootstrap.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check protocol agent lab bench tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/python -m lab.demo

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
