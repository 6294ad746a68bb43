# Two commands on a fresh machine: `make run` (the end-to-end pipeline on Office) and `make test`.
# TORCH selects the torch requirement; the default is the CPU build. GPU users: make run TORCH=torch
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
DATASET ?= office
ARGS ?=
BIN := $(VENV)/bin
SHARED_DATA := $(abspath ../shared/data)

# Offline-safe defaults: no telemetry host is ever waited on.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := False
export MLFLOW_DISABLE_TELEMETRY := true
# The local mirror of public datasets is tried before any download.
ifneq ($(wildcard $(SHARED_DATA)),)
export INFODCL_DATA_MIRROR ?= $(SHARED_DATA)
endif

.PHONY: install run test bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/infodcl run $(DATASET) $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

bench: install
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf artifacts mlruns mlflow.db mlartifacts .pytest_cache
