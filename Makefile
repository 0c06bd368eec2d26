# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SERVING_VENV := .venv-serving
PORT ?= 5001
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DATASET ?= synthetic
SCALE ?= demo
export CONTOSO_RECS_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CONTOSO_RECS_DATA_DIR)/dagster_home

.PHONY: setup serving-setup system-deps demo demo-completejourney backtest ui serve test lint \
	format evaluate bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

## The online endpoint's own environment: the Azure ML inference server pins older libraries.
serving-setup: $(SERVING_VENV)/.installed

$(SERVING_VENV)/.installed: requirements-serving.txt
	$(PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_VENV)/bin/pip install --quiet -r requirements-serving.txt
	touch $@

## Debian packages the tests use: unixODBC and the SQLite ODBC driver (a real driver for pyodbc).
system-deps:
	@if ! odbcinst -q -d 2>/dev/null | grep -q '^\[SQLite3\]'; then \
		echo "installing unixodbc and libsqliteodbc (Debian packages)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq unixodbc libsqliteodbc; \
	fi

## Generate the demo data and run the main job on the embedded (local) environment.
demo: setup
	$(PY) -m contoso_recs.cli demo --dataset $(DATASET) --scale $(SCALE)

## The same main job on The Complete Journey (real grocery data).
demo-completejourney:
	$(MAKE) demo DATASET=completejourney

## The weekly flow for a past week, training included, on the data from before it:
##   make backtest WEEK=2017-12-04 DATASET=completejourney   (or the demo data: make backtest WEEK=2026-11-23)
## The Complete Journey goes to data/completejourney (as for make evaluate), the demo data to data/.
BACKTEST_DIR = $(if $(filter completejourney,$(DATASET)),$(CURDIR)/data/completejourney,$(CONTOSO_RECS_DATA_DIR))
backtest: setup
	@test -n "$(WEEK)" || { echo "usage: make backtest WEEK=YYYY-MM-DD (a Monday) [DATASET=completejourney]"; exit 2; }
	$(PY) -m contoso_recs.cli backtest --week $(WEEK) --dataset $(DATASET) --scale $(SCALE) \
		--data-dir $(BACKTEST_DIR)

## The Dagster UI on http://127.0.0.1:$(UI_PORT) (3000 unless given) over the demo's instance.
UI_PORT ?= 3000
ui: setup
	$(PY) -c 'import sys; from contoso_recs.main_job import instance_config; instance_config(sys.argv[1])' $(abspath $(DAGSTER_HOME))
	DAGSTER_HOME=$(abspath $(DAGSTER_HOME)) $(VENV)/bin/dagster dev -h 127.0.0.1 -p $(UI_PORT) -w workspace.yaml

## Real-time recommendations on http://127.0.0.1:$(PORT)/score from the promoted model
## (publishes its serving bundle first when the promoted model has none yet).
serve: setup serving-setup
	$(PY) -m contoso_recs.serving.publish --data-dir $(CONTOSO_RECS_DATA_DIR) --if-stale
	$(SERVING_VENV)/bin/python -m contoso_recs.serving.local_server \
		--model-dir $(CONTOSO_RECS_DATA_DIR)/serving --port $(PORT)

test: setup serving-setup system-deps lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## The evaluation on The Complete Journey at two cutoffs: reports/evaluation.{md,json,png} and
## reports/evaluation_details.json (segments, intervals, blend weights);
## real-time recommendations offline: reports/evaluation_online.{md,json}.
## One PyTorch thread, so a rerun on the same installed packages reproduces the figures exactly
## (more threads sum gradients in another order: the models differ a little, task-B HR@5 by up
## to .007). A fresh install can move them as much: the reports of 2026-12-05 moved by up to .007
## HR@5 from the day before's with no change to the training code.
evaluate: setup
	$(PY) -m contoso_recs.cli demo --dataset completejourney --skip-training \
		--data-dir $(CURDIR)/data/completejourney
	$(PY) -m contoso_recs.recommender.evaluate --lake $(CURDIR)/data/completejourney/lake \
		--dataset completejourney --cutoffs 2017-12-04 2017-11-13 --out reports --threads 1
	$(PY) -m contoso_recs.recommender.online_evaluation --lake $(CURDIR)/data/completejourney/lake \
		--dataset completejourney --cutoff 2017-12-04 --task basket --out reports --threads 1
	@if [ -f $(CONTOSO_RECS_DATA_DIR)/models/current.json ]; then \
		$(PY) -m contoso_recs.recommender.online_evaluation --lake $(CONTOSO_RECS_DATA_DIR)/lake \
			--dataset synthetic --promoted-from $(CONTOSO_RECS_DATA_DIR)/models \
			--task next_view --validation-days 3 --out reports; \
	else echo "no demo model: run make demo for the synthetic online evaluation"; fi

## Benchmarks at full scale (training: demo-scale lake, also with a 2M-row customer table);
## figures go to reports/benchmarks.{md,json}.
bench: setup serving-setup
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.batch_scoring
	$(PY) -m benchmarks.weekly_table
	$(PY) -m benchmarks.learned_rule
	$(PY) -m benchmarks.als_signal
	$(PY) -m benchmarks.view_duplicates
	$(PY) -m benchmarks.training
	$(PY) -m benchmarks.serving_load

clean:
	rm -rf data
