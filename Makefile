# Two entry points: `make repro` (venv + the whole demo pipeline) and `make test` (venv + lint + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv repro test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .   # the cxr-transfer command (predict)
	touch $(STAMP)

venv: $(STAMP)

# make repro: stages forked from a warm process (docs/performance.md); make repro CXR_WARM=0: off
CXR_WARM ?= 1

repro: venv
	CXR_WARM=$(CXR_WARM) dvc repro

lint: venv
	ruff check .
	ruff format --check .
	lint-imports   # the layering contracts in pyproject.toml

test: lint
	pytest

bench: venv
	python -m bench --size tiny

clean:
	rm -rf $(VENV) dvc_plots .pytest_cache .ruff_cache
