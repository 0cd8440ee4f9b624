# The two commands a newcomer needs are `make demo` and `make test`; both run the
# (idempotent, fast when done) setup first. Extra pytest arguments: make test PYTEST_ARGS='-k localdb -x'.
SHELL := /bin/bash
VENV  := .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup demo test lint bench screenshots clean

setup:
	@scripts/setup

demo: setup
	$(VENV)/bin/engine demo

# The linters first: they take seconds and fail before the long pytest run would.
# One worker process per core, at most four (each starts its own throwaway database cluster);
# make test PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= auto
test: setup lint
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --maxprocesses 4 $(PYTEST_ARGS)

# Formatting, lint and types, as configured in pyproject.toml (mypy checks engine/).
LINT_PATHS := engine tests bench
lint: setup
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

# Every bench/*.py script, one after the other; each prints its own figures.
# Smaller runs: make bench BENCH_ARGS='--runs 20 --steps 100' (passed to every script).
bench: setup
	@set -e; shopt -s nullglob; scripts=(bench/*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmark scripts in bench/"; exit 0; fi; \
	for s in "$${scripts[@]}"; do echo "== $$s"; $(VENV)/bin/python "$$s" $(BENCH_ARGS); done

# Build products and caches only: the embedded database in .engine/ holds your data and is
# kept (stop it with `engine db down`, then delete .engine/ yourself to start over).
# The web console's pages at 1280x800 and 390x844 into docs/images/ (the README shows them).
screenshots: setup
	$(VENV)/bin/pytest tests/acceptance/screenshots.py -q

clean:
	rm -rf $(VENV) .setup .pytest_cache .hypothesis .mypy_cache .ruff_cache *.egg-info build dist
	find . \( -path ./.engine -o -path ./.git \) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
