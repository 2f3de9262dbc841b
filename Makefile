# Passerelle: `make demo` and `make test` are the only two set-up commands a new machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck bench bench-mapping serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/passerelle demo

serve: $(STAMP)
	$(BIN)/passerelle serve

test: $(STAMP)
	$(BIN)/ruff format --check broker tests benchmarks
	$(BIN)/ruff check broker tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

check: test

lint: $(STAMP)
	$(BIN)/ruff format broker tests benchmarks
	$(BIN)/ruff check --fix broker tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-mapping: $(STAMP)
	$(BIN)/python -m benchmarks.mapping

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .coverage
