# Gridwork — `make help` lists the targets. `make run` and `make test` are the two
# a newcomer needs; both install what is missing (nats-server via apt).

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
VAR := $(CURDIR)/var
NATS_PORT ?= 4333
NATS_URL ?= nats://127.0.0.1:$(NATS_PORT)
BUF := $(CURDIR)/.tools/node_modules/.bin/buf
# PostgreSQL for tests: used when set, or when a server answers on 127.0.0.1:5432.
PG_DEFAULT := postgres://postgres@127.0.0.1:5432/postgres

.PHONY: help deps build run test test-sqlite bench lint fmt proto-lint deploy-check clean

help: ## List targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

deps: ## Install what is missing: nats-server (Debian package); checks for cargo
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
	@command -v nats-server >/dev/null || { \
		echo "nats-server not found: installing Debian's nats-server package"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; }
	@nats-server --version

build: deps ## Build the whole workspace
	$(CARGO) build --workspace --all-targets

run: deps ## Start a private nats-server under var/ and the services on SQLite
	@mkdir -p $(VAR)/nats
	$(CARGO) build --workspace
	@./deploy/dev/run.sh "$(VAR)" "$(NATS_PORT)"

test: deps ## Run every test (SQLite always; PostgreSQL when reachable)
	@if [ -z "$$GRIDWORK_TEST_POSTGRES_URL" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then \
		export GRIDWORK_TEST_POSTGRES_URL=$(PG_DEFAULT); fi; \
	if [ -z "$$GRIDWORK_TEST_POSTGRES_URL" ]; then \
		echo "!! No PostgreSQL: GRIDWORK_TEST_POSTGRES_URL is unset and nothing answers on 127.0.0.1:5432."; \
		echo "!! These PostgreSQL tests will pass WITHOUT running (each prints SKIPPED); SQLite tests run in full:"; \
		$(CARGO) test --workspace -q -- --list 2>/dev/null | grep -i postgres | sed 's/^/!!   /'; \
	else echo "PostgreSQL tests run against $$GRIDWORK_TEST_POSTGRES_URL"; fi; \
	$(CARGO) test --workspace

bench: deps ## Print the kernel's figures (append rate, cold load, projection catch-up)
	@if [ -z "$$GRIDWORK_TEST_POSTGRES_URL" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then \
		export GRIDWORK_TEST_POSTGRES_URL=$(PG_DEFAULT); fi; \
	$(CARGO) bench -p gridwork-sample-ledger --bench kernel
	$(CARGO) bench -p gridwork-grid-registry --bench locate
	$(CARGO) bench -p gridwork-e2e --bench intake

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
