# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
DATASET ?= synthetic
SCALE ?= demo
export CONTOSO_RECS_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home

.PHONY: setup demo demo-completejourney ui test lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

## Generate the demo data and run the main job on the embedded (local) environment.
demo: setup
	$(PY) -m contoso_recs.cli demo --dataset $(DATASET) --scale $(SCALE)

## The same main job on The Complete Journey (real grocery data).
demo-completejourney:
	$(MAKE) demo DATASET=completejourney

## The Dagster UI on http://127.0.0.1:3000 over the same instance the demo used.
ui: setup
	mkdir -p $(DAGSTER_HOME)
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

test: setup lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Benchmarks at full scale; figures go to reports/benchmarks.{md,json}.
bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf data
