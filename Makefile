# Gaggle: one command to run it, one to test it. Every target sets up what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# uv from PATH, else a private copy installed with pip into .tools/ on first use.
UV ?= $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
SYNC_STAMP := .venv/.synced

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv .tools && .tools/bin/pip install --quiet uv

$(SYNC_STAMP): pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml apps/*/pyproject.toml | $(UV)
	$(UV) sync --all-packages --locked --python $(PYTHON) && touch $@

sync: $(SYNC_STAMP) ## Create or update the virtual environment (.venv)

run: $(SYNC_STAMP) ## Start NATS, PostgreSQL and the five services (Ctrl-C stops)
	$(UV) run --no-sync gaggle-stack

test: $(SYNC_STAMP) ## Run every test: unit, integration (real NATS + PostgreSQL) and e2e
	$(UV) run --no-sync pytest $(PYTEST_ARGS)

test-unit: $(SYNC_STAMP) ## Only the fast tests that need no servers
	$(UV) run --no-sync pytest -m "not integration and not e2e" $(PYTEST_ARGS)

test-integration: $(SYNC_STAMP) ## Only the integration tests
	$(UV) run --no-sync pytest -m integration $(PYTEST_ARGS)

test-e2e: $(SYNC_STAMP) ## Only the end-to-end tests
	$(UV) run --no-sync pytest -m e2e $(PYTEST_ARGS)

chaos: $(SYNC_STAMP) ## Chaos suite: kill each part mid-rollout, 500 devices (GAGGLE_CHAOS_DEVICES)
	GAGGLE_CHAOS_ALL=1 GAGGLE_CHAOS_DEVICES=$${GAGGLE_CHAOS_DEVICES:-500} $(UV) run --no-sync pytest tests/e2e/test_chaos.py -rP $(PYTEST_ARGS)

test-cluster: $(SYNC_STAMP) ## Cluster suite: 3 NATS nodes, 2 replicas of each service, a node killed mid-rollout
	GAGGLE_CLUSTER_TESTS=1 $(UV) run --no-sync pytest tests/cluster -rP $(PYTEST_ARGS)

.PHONY: test-cluster

fuzz-api: $(SYNC_STAMP) ## Schemathesis against every operator API, 100 examples per operation
	GAGGLE_FUZZ_EXAMPLES=$${GAGGLE_FUZZ_EXAMPLES:-100} $(UV) run --no-sync pytest tests/integration/test_api_fuzz.py $(PYTEST_ARGS)

bench-poll: $(SYNC_STAMP) ## Poll benchmark: gateway vs a bare FastAPI endpoint (needs wrk)
	$(UV) run --no-sync python bench/poll_bench.py $(BENCH_ARGS)

bench: $(SYNC_STAMP) ## Fleet benchmark: Gaggle vs gooseBit 0.2.12 (polls, first contact, rollout)
	$(UV) run --no-sync python bench/fleet_bench.py $(BENCH_ARGS)

bench-scale: $(SYNC_STAMP) ## Scale benchmark: 100,000 devices polling every 60 s, a rollout in waves
	$(UV) run --no-sync python bench/scale_bench.py $(BENCH_ARGS)

docs: $(SYNC_STAMP) ## Regenerate docs/: AsyncAPI and OpenAPI per service, architecture.md
	$(UV) run --no-sync python docs/generate.py docs

fmt: $(SYNC_STAMP) ## Format and autofix
	$(UV) run --no-sync ruff format . && $(UV) run --no-sync ruff check --fix .

lint: $(SYNC_STAMP) ## ruff
	$(UV) run --no-sync ruff check . && $(UV) run --no-sync ruff format --check .

typecheck: $(SYNC_STAMP) ## mypy --strict
	$(UV) run --no-sync mypy

deps: $(SYNC_STAMP) ## deptry per workspace member: each declares every package its code imports
	@for member in libs/*/ services/*/ apps/*/; do \
		echo "deptry $$member"; \
		(cd $$member && $(CURDIR)/.venv/bin/deptry src) || exit 1; \
	done

check: lint typecheck deps ## lint + typecheck + declared dependencies

clean: ## Remove the environment and caches (keeps .gaggle/ data)
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache

.PHONY: help sync run test test-unit test-integration test-e2e chaos fuzz-api bench-poll bench fmt lint typecheck deps check clean docs
.PHONY: bench-scale
