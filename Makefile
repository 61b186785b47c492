# Geo-Sapiens developer tasks. `make demo` and `make test` work on a fresh machine (they install first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

.PHONY: install test demo lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade-strategy only-if-needed -e '.[dev]'
	touch $@

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/geosapiens demo

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
