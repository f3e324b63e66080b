# onceflow developer commands. `make test` is what CI runs (.ci/run); it needs only python3,
# a JDK 17, Maven and Go on the machine: the venv, the Kafka jars, the broker and the deploy
# check tools (hadolint, helm, kubernetes-validate, checkov, promtool) are set up here.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA_LOCAL := $(PYTHON) scripts/kafka_local.py
WITH_BROKER := PYTHON=$(PYTHON) scripts/with_broker.sh
DEV_BROKER_DIR ?= $(HOME)/.cache/onceflow/dev-broker
LINT_PATHS := $(wildcard app state processors tests bench scripts)
PYTEST_ARGS ?=

.PHONY: help venv lint deploy-check test chaos bench run kafka-up kafka-down constraints clean

help:
	@echo "make venv        create .venv and install onceflow[dev] with constraints.txt"
	@echo "make lint        ruff check, ruff format --check, mypy --strict"
	@echo "make deploy-check hadolint, helm lint/template, kubernetes-validate, checkov, promtool (offline)"
	@echo "make test        lint, deploy-check, then the test suite against a fresh local Kafka (CI runs this)"
	@echo "make chaos       soak tests against a fresh local Kafka"
	@echo "make bench       benchmarks (python -m bench) against a fresh local Kafka"
	@echo "make run         the reference app with a demo producer"
	@echo "make kafka-up    single-node Kafka on 127.0.0.1:9092 (data in $(DEV_BROKER_DIR))"
	@echo "make kafka-down  stop it"
	@echo "KAFKA_VERSION=4.1.1 picks another Kafka release; PYTEST_ARGS passes options to pytest."

venv: $(STAMP)

# Reinstall only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade -c constraints.txt pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(PYTHON) scripts/typecheck_view.py >/dev/null
	$(BIN)/mypy

# Offline checks of the Dockerfile and the Helm chart. The pinned tools are installed on first
# use into ~/.cache/onceflow/tools (helm is built with `go install`: minutes, once).
deploy-check:
	scripts/check_deploy.sh

test: lint deploy-check
	$(WITH_BROKER) $(BIN)/pytest -m "not soak" $(PYTEST_ARGS)

# pytest exits 5 when it collects nothing: no soak test yet is not a failure.
chaos: lint
	$(WITH_BROKER) bash -c '$(BIN)/pytest -m soak $(PYTEST_ARGS) || { s=$$?; \
	  if [ $$s -eq 5 ]; then echo "make chaos: no soak tests yet"; exit 0; fi; exit $$s; }'

# The benchmark suite (bench/, docs/benchmarks.md) on a fresh broker: BENCH_ARGS="--quick".
bench: venv
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(WITH_BROKER) $(BIN)/python -m bench $(BENCH_ARGS)

# The reference app end to end: a local broker unless ONCEFLOW_BOOTSTRAP_SERVERS is set, the
# worker, a demo producer, and the counts as they change. RUN_ARGS="--seconds 30" stops by itself.
# The demo's state lives with the dev broker it started: a fresh broker never meets the
# checkpoints of an older one's changelogs (the worker would rightly refuse them).
run: venv
	@if [[ -z "$${ONCEFLOW_BOOTSTRAP_SERVERS:-}" ]]; then $(MAKE) --no-print-directory kafka-up; \
	  export ONCEFLOW_STATE_DIR="$${ONCEFLOW_STATE_DIR:-$(DEV_BROKER_DIR)/demo-state}"; fi; \
	$(BIN)/python scripts/run_demo.py $(RUN_ARGS)

kafka-up:
	$(KAFKA_LOCAL) start --data-dir $(DEV_BROKER_DIR) --port 9092 --controller-port 9093

kafka-down:
	$(KAFKA_LOCAL) stop --data-dir $(DEV_BROKER_DIR)

# Re-pin constraints.txt from a throwaway venv after a change to pyproject.toml's dependencies.
constraints:
	rm -rf .constraints-venv
	$(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/python -m pip install --quiet --upgrade pip
	.constraints-venv/bin/python -m pip install --quiet -e '.[dev]'
	{ echo "# Pinned versions for a reproducible install: pip install -c constraints.txt -e '.[dev]'."; \
	  echo "# Regenerate after changing pyproject.toml dependencies with: make constraints"; \
	  .constraints-venv/bin/python -m pip freeze --all --exclude-editable \
	    | grep -Ev '^(setuptools|wheel)=='; } > constraints.txt
	rm -rf .constraints-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
