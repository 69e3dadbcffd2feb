# The README's two commands are `make demo` and `make test`; every target builds
# the venv first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIGESTS ?= ../shared/digests
DEMO_DB ?= papertag.duckdb

.PHONY: venv demo test lint bench clean lock

venv: $(STAMP)

# Reinstall when the pins or the project metadata change.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: venv
	$(BIN)/papertag --db $(DEMO_DB) ingest $(DIGESTS)/*.txt
	$(BIN)/papertag --db $(DEMO_DB) stats

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

bench: venv
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/annotate.py

# Regenerate the pins from pyproject.toml (needs the package index).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.lockvenv/bin/pip freeze --exclude-editable | grep -v '^papertag' > constraints.txt
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) $(DEMO_DB) .mypy_cache .ruff_cache
