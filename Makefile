# The two commands that matter: `make demo` and `make test`. Each creates
# .venv if needed and reinstalls only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PTRANSFER := $(VENV)/bin/ptransfer
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test demo demo-full assets fixtures bench clean

# constraints.txt holds the tested exact pins; pyproject.toml the compatible ranges.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# Fetch the pinned offline assets (a real pretrained LM and real corpora) into
# $PTRANSFER_CACHE; verified by sha256, a no-op when already there.
assets: $(STAMP)
	$(PTRANSFER) assets fetch

# lint-imports checks the one-way layers (contracts in pyproject.toml).
test: assets
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 --durations=15

demo: assets
	$(PTRANSFER) demo --gin_file=experiments/demo.gin

demo-full: assets
	$(PTRANSFER) demo --gin_file=experiments/demo_full.gin

# Regenerates the committed reference fixtures with torch + transformers
# (the local CPU build of torch; never a range that pulls CUDA wheels).
fixtures: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	$(PY) tests/fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) demo_out demo_full_out
