# One entry point each for install, run, test and lint: used by the README, .ci/run and people.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install demo serve test image-test lint format bench lock clean prometheus-rule

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements-dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	@# Exactly the locked files, hashes checked, and nothing else. --no-deps: pip resolves nothing
	@# against the index, so a release made after the lock cannot change or break the install
	@# (the lock is complete: `pip check` proves it). The lock's own pip replaces the stock one.
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip check
	@# The broker itself, built with the locked setuptools: an isolated build would fetch the
	@# newest setuptools from the index. setuptools prints a boxed notice on every editable
	@# install ("Editable installation."): informational only, silenced by its text.
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the broker with its dev tools

demo: $(STAMP) ## run the sandbox: stand-in VideoDB, dev issuer, printed curl line (PROVIDERS=2: two issuers)
	$(BIN)/token-broker demo $(if $(PORT),--port $(PORT),) $(if $(PROVIDERS),--providers $(PROVIDERS),)

serve: $(STAMP) ## run the production server with settings from the environment / .env
	$(BIN)/token-broker serve

test: $(STAMP) ## run the whole suite (unit and integration) with coverage
	$(BIN)/pytest --cov --cov-report=term $(PYTEST_ARGS)

image-test: $(STAMP) ## build the Dockerfile with buildah (daemonless, as root) and check the image from outside
	@command -v buildah >/dev/null && command -v debootstrap >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq --no-install-recommends buildah debootstrap >/dev/null; } || { echo "install buildah and debootstrap: apt-get install buildah debootstrap"; exit 1; }
	BROKER_TESTS_REQUIRE_ALL=1 $(BIN)/pytest -m image tests/image $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint and format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --strict examples/desktop/capture_app.py
	$(BIN)/hadolint Dockerfile

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

LOCK_FLAGS := -q --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links

lock: $(STAMP) ## re-pin requirements.lock (runtime with [otel], for the image), requirements-dev.lock (with the dev tools) and requirements-build.lock (what builds the broker's wheel)
	$(BIN)/pip-compile $(LOCK_FLAGS) --extra otel --output-file requirements.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --allow-unsafe --extra dev --extra otel --output-file requirements-dev.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --allow-unsafe --only-build-deps --build-deps-for wheel --output-file requirements-build.lock pyproject.toml

prometheus-rule: ## deploy/kubernetes/components/prometheus-operator/prometheusrule.yaml from deploy/prometheus/alerts.yaml (after editing the rules)
	sh deploy/kubernetes/components/prometheus-operator/build-rule.sh > deploy/kubernetes/components/prometheus-operator/prometheusrule.yaml

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov

bench: $(STAMP) ## performance figures side by side (needs wrk and redis-server: apt-get install wrk redis-server)
	@{ command -v wrk && command -v redis-server; } >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk redis-server >/dev/null; } || { echo "install wrk and redis-server: apt-get install wrk redis-server"; exit 1; }
	$(BIN)/python -m bench.run
	@# live capture: event to feed on one replica and across two (Redis), memory per feed
	$(if $(or $(if $(BENCH_ONLY),,all),$(findstring live,$(BENCH_ONLY))),$(BIN)/python -m bench.live_feed)
