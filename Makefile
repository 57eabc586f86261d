# Kyojo: the two commands are `make demo` and `make test` (both create .venv/ first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Playwright (a dev dependency) drives Debian's chromium; it must never download a browser of its own
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: venv services demo test lint typecheck unit bench bench-city clean train-af train-nilm check-nilm vendor-js

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Mosquitto, InfluxDB and PostgreSQL (the trading ledger): installed with apt-get when missing and running as root on Debian, else a clear message.
services: venv
	$(BIN)/python -c "from provisioning.local import ensure_installed; ensure_installed(('mosquitto', 'influxdb', 'postgresql'), install=True)"

demo: services
	$(BIN)/kyojo demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy kyojo edge_agent cloud_ingest drivers provisioning models firmware_tests

unit: services
	$(BIN)/pytest

test: lint typecheck unit

bench: services
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/edge.py
	$(BIN)/python bench/af.py
	$(BIN)/python bench/nilm.py
	$(BIN)/python bench/web.py
	$(BIN)/python bench/navi.py
	$(BIN)/python bench/surplus.py

# A city against one broker (not part of `make bench`: ~5 min; docs/OPERATIONS.md has the figures). N=... to size it.
N ?= 1000
bench-city: services
	$(BIN)/python bench/city.py --gateways $(N) --minutes 2 --storm --storm-periods 1

# Reproduce the committed models from ../shared/data (fixed seeds; see each model card).
SHARED ?= ../shared/data
train-af: venv
	$(BIN)/pip install --quiet -e '.[train]'
	$(BIN)/python -m models.af.train --data $(SHARED)/rr

# NILM: each file with its recipe (RECIPES in models/nilm/train.py), ~1 min on one core here; check-nilm retrains
# into a temporary directory and fails unless every file (and its manifest entry) is reproduced byte for byte.
train-nilm: venv
	$(BIN)/pip install --quiet -e '.[train]'
	nice -n 10 $(BIN)/python -m models.nilm.train --data-dir $(SHARED)/nilm

check-nilm: venv
	$(BIN)/pip install --quiet -e '.[train]'
	nice -n 10 $(BIN)/python -m models.nilm.train --data-dir $(SHARED)/nilm --check

# Re-fetch the vendored htmx, uPlot (and axe-core for the tests) from npm; see edge_agent/web/static/vendor/PROVENANCE.md
vendor-js:
	bash edge_agent/web/static/vendor/update.sh

clean:
	rm -rf .kyojo .mypy_cache .ruff_cache .pytest_cache
