# The verbs a newcomer needs. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

.PHONY: help test deps deps-down dev dev-down dev-restart dev-status dev-logs fmt lint check

help: ## list the verbs
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

test: deps ## run every test (starts a local Redis and MariaDB first)
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi

deps: ## start a local Redis and MariaDB for tests and dev (data in .dev/)
	deploy/dev/deps.sh up

deps-down: ## stop them
	deploy/dev/deps.sh down

dev: ## run every service natively against the local Redis and MariaDB (http://localhost:8080)
	deploy/dev/services.sh up

dev-down: ## stop the natively running services
	deploy/dev/services.sh down

dev-restart: ## rebuild and restart them
	deploy/dev/services.sh restart

dev-status: ## which services and dependencies are running
	deploy/dev/services.sh status

dev-logs: ## follow the logs (make dev-logs s=gateway for one service)
	deploy/dev/services.sh logs $(s)

fmt: ## format the code
	cargo fmt --all

lint: ## formatting and clippy, as CI runs them
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

check: lint test ## what CI runs
