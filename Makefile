# Two commands on a fresh machine: `make run` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: bench-search run test bench lint store examples clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The embedded store (FerretDB, SQLite backend) is built once into .cache/bin; not needed with MONGODB_URI.
store:
	@if [ -z "$$MONGODB_URI" ]; then scripts/install-ferretdb.sh; fi

examples:
	@scripts/fetch-fhir-examples.sh

run: store $(STAMP)
	$(BIN)/medunion run

lint: $(STAMP)
	$(BIN)/ruff check fhir_server tests bench scripts
	$(BIN)/mypy

# Tests always run against a throwaway FerretDB that the test session starts and stops.
test: $(STAMP) examples
	@scripts/install-ferretdb.sh
	$(BIN)/ruff check fhir_server tests bench scripts
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	@scripts/install-ferretdb.sh
	$(BIN)/python -m bench.http_crud
	$(BIN)/python -m bench.bundle_ingest

# search at 100,000 patients: loads 500,000 resources once into .cache/search-store (~9 min), then measures
bench-search: $(STAMP)
	@scripts/install-ferretdb.sh
	@command -v wrk >/dev/null || echo "medunion: wrk not found (apt-get install wrk): aiohttp drives the hub, taking more of its CPU" >&2
	$(BIN)/python -m bench.search --patients 100000 --seconds 15 --store-dir .cache/search-store

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
