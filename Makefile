# tollgate: the two commands are `make run` and `make test`; the rest are their parts.
# Builds are debug builds of the whole workspace (per-crate builds would re-resolve features).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
ARGS ?=

.PHONY: run build test services tools fmt fmt-check lint test-only bench services-down clean deploy-check

## make run: build and run the whole gateway on the embedded default (no servers needed).
run: build
	TOLLGATE_ROUTER__DEV_TENANT=$${TOLLGATE_ROUTER__DEV_TENANT:-dev} ./target/debug/tollgate serve $(ARGS)

## make build: debug build of the workspace.
build:
	$(CARGO) build --workspace

## make test: services up (Postgres with pgvector, Redis), tools, deploy-check, fmt check, clippy
## (which also compiles the benchmarks), every test. Benchmarks run with `make bench`, not here:
## some load millions of rows.
test: services tools deploy-check fmt-check lint
	services_env=$$(scripts/services.sh env) && tools_env=$$(scripts/tools.sh env) && \
	eval "$$services_env" && eval "$$tools_env" && \
	$(CARGO) test --workspace --lib --bins --tests

## make test-only: the tests alone, for a quick rerun after `make test` set things up.
test-only:
	services_env=$$(scripts/services.sh env) && tools_env=$$(scripts/tools.sh env) && \
	eval "$$services_env" && eval "$$tools_env" && \
	$(CARGO) test --workspace --lib --bins --tests $(ARGS)

## make deploy-check: render, lint and validate the Helm chart, promtool rule tests, canary gate tests.
deploy-check: tools
	tools_env=$$(scripts/tools.sh env) && eval "$$tools_env" && \
	"$$DEPLOY_PYTHON" scripts/deploy_check.py

services:
	scripts/services.sh up

services-down:
	scripts/services.sh down

tools:
	scripts/tools.sh install

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## make bench: the benchmarks recorded in BENCHMARKS.md.
bench:
	$(CARGO) bench --workspace

clean:
	$(CARGO) clean
