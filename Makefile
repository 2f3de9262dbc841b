# Passerelle: `make demo` and `make test` are the only two set-up commands a new machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The real FHIR R4 server the integration tests deliver to (Medplum's router from npm).
FHIR_SERVER := tests/fhir_server
FHIR_STAMP := $(FHIR_SERVER)/node_modules/.installed

.PHONY: demo test test-unit test-fast check lint typecheck bench bench-mapping soak serve clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The broker and the simulator (demo/, the `demo` extra), both editable: the tests, the benchmark
# and `make demo` need the simulator; a production install (`pip install .`) does not have it.
# constraints.txt pins every distribution, dev tools and the simulator's included (`make lock`
# regenerates it): a checkout installs what CI and the Docker image install.
$(STAMP): pyproject.toml demo/pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,demo]' -e ./demo
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/passerelle demo

serve: $(STAMP)
	$(BIN)/passerelle serve

# npm ci only when the lock changed. Without npm: a clear message, and a failure under CI=true
# (elsewhere the real-server tests then skip with the same reason).
$(FHIR_STAMP): $(FHIR_SERVER)/package.json $(FHIR_SERVER)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(FHIR_SERVER) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "npm not found: the real FHIR server tests need Node.js >= 20 and npm (Debian: apt-get install nodejs npm)" >&2; \
		if [ "$$CI" = "true" ]; then exit 1; fi; \
	fi

# The console's browser tests (tests/console/test_browser.py) drive Debian's Chromium through
# Playwright; Playwright's own browser download cannot work here, so the file is the stamp: when
# /usr/bin/chromium is missing, install Debian's package (as root), else fail saying so.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = "0" ]; then \
		apt-get update && apt-get install -y chromium; \
	else \
		echo "$(CHROMIUM) is missing: the browser tests need Debian's chromium; as root: apt-get update && apt-get install -y chromium" >&2; \
		exit 1; \
	fi
	@test -x $(CHROMIUM) || { echo "apt-get installed no $(CHROMIUM)" >&2; exit 1; }

# The whole suite with coverage on two workers (pytest-xdist): tests/conftest.py makes the
# integration tests one unit of work, sent first, so one worker runs them one after the other
# (their stacks never compete with each other) while the other takes the unit tests file by
# file. PYTEST_WORKERS=0 runs everything in this one process.
PYTEST_WORKERS ?= 2
test: $(STAMP) $(FHIR_STAMP) $(CHROMIUM)
	$(BIN)/ruff format --check broker demo tests benchmarks
	$(BIN)/ruff check broker demo tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest --cov --cov-report=term -n $(PYTEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder $(PYTEST_ARGS)

# The inner loop, under two minutes on 2 cores: everything but the integration tests (no Celery
# processes, no serve, no real FHIR server) and the browser tests, one worker per core; a test
# that needs Redis still starts a real one. `make test` runs them all. test-fast is the older name.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not slow and not browser" -q -n auto --dist loadfile $(PYTEST_ARGS)

test-fast: test-unit

check: test

lint: $(STAMP)
	$(BIN)/ruff format broker demo tests benchmarks
	$(BIN)/ruff check --fix broker demo tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-mapping: $(STAMP)
	$(BIN)/python -m benchmarks.mapping

# Redis memory under a steady stream (an hour at 100 msg/s by default; SOAK_ARGS="--seconds 600").
soak: $(STAMP)
	nice -n 10 $(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

# Re-pin constraints.txt after a change to the dependencies of pyproject.toml (pip-tools runs in a
# throw-away venv; the pins come from the package index pip is configured with).
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet pip-tools
	$(VENV)-lock/bin/python -c 'import tomllib; deps = tomllib.load(open("demo/pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if d != "passerelle"))' > $(VENV)-lock/demo.in
	$(VENV)-lock/bin/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url \
		--no-emit-find-links --output-file constraints.txt pyproject.toml $(VENV)-lock/demo.in
	rm -rf $(VENV)-lock

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .coverage $(FHIR_SERVER)/node_modules
