# Geo-Sapiens developer tasks. `make demo` and `make test` work on a fresh machine (they install first).
# `make test` runs every test (what CI runs); `make test-fast` leaves out the tests marked `slow`
# (multi-process and end-to-end runs) for a quick check while developing: a few minutes on 2 cores.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

.PHONY: install test test-fast demo lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade-strategy only-if-needed -e '.[dev]'
	touch $@

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(BIN)/geosapiens demo

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
