# The verbs a newcomer needs. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

.PHONY: help test faults python-venv bench instructions soak deps deps-down dev dev-down dev-restart dev-status dev-logs fmt lint check \
	images standins up down logs e2e k8s

help: ## list the verbs
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

test: deps python-venv ## run every test (starts a local Redis and MariaDB first)
	cargo build --workspace --bins
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi

faults: ## the fault suite: the stack under load while MySQL, Redis, llm, the provider and the gateway fail (target/faults/)
	cargo build --workspace --bins
	CHAT_STACK_LOG_DIR=target/faults/logs target/debug/chat-faults $(FAULTS_ARGS)

# The real OpenAI clients (openai, langchain-openai, pytest) that
# services/gateway/tests/python_clients.rs runs against the stack, pinned.
PYTHON_VENV := target/python-venv
PYTHON_REQUIREMENTS := services/gateway/tests/python/requirements.txt

python-venv: $(PYTHON_VENV)/.installed ## the Python environment of the /v1 client tests (target/python-venv)

$(PYTHON_VENV)/.installed: $(PYTHON_REQUIREMENTS)
	python3 -m venv $(PYTHON_VENV)
	$(PYTHON_VENV)/bin/pip install --quiet --disable-pip-version-check -r $(PYTHON_REQUIREMENTS)
	touch $@

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

bench: deps ## measure the stack against the bare provider (release build; results in target/bench/)
	cargo build --release --bins
	mariadb -h127.0.0.1 -P$${DEV_MYSQL_PORT:-3306} -uchat -pchat \
		-e "DROP DATABASE IF EXISTS chat_bench; CREATE DATABASE chat_bench CHARACTER SET utf8mb4"
	target/release/chat-bench $(BENCH_ARGS)

instructions: deps ## instructions per chat of each service, counted by callgrind (release build; profiles in target/instructions/)
	cargo build --release --bins
	deploy/dev/instructions.sh

# The soak: SOAK_SECS of chats and streams (16 clients), half of it with /metrics scraped.
# Release binaries by default; CI runs SOAK_SECS=60 SOAK_PROFILE=debug on what `make test` built.
SOAK_SECS ?= 600
SOAK_PROFILE ?= release
soak: deps ## held load: memory flat, no errors, latency steady (SOAK_SECS=600; results in target/soak/)
	cargo build $(if $(filter release,$(SOAK_PROFILE)),--release) --workspace --bins
	mariadb -h127.0.0.1 -P$${DEV_MYSQL_PORT:-3306} -uchat -pchat \
		-e "DROP DATABASE IF EXISTS chat_soak; CREATE DATABASE chat_soak CHARACTER SET utf8mb4"
	SOAK_MYSQL_DSN=mysql://chat:chat@127.0.0.1:$${DEV_MYSQL_PORT:-3306}/chat_soak \
		target/$(SOAK_PROFILE)/chat-bench soak --seconds $(SOAK_SECS) $(SOAK_ARGS)

fmt: ## format the code
	cargo fmt --all

lint: ## formatting and clippy, as CI runs them
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

k8s: ## check the Kubernetes manifests offline: render, schemas, yamllint, review (deploy/k8s)
	deploy/k8s/check.sh

check: lint k8s test ## what CI runs

# --- containers (compose.yaml, docker/, deploy/docker/) ---------------------------------
# The v2 plugin where there is one, else Debian's docker-compose.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

images: ## build the service images (EXTRA_CA_CERT=bundle.crt to trust a proxy's CA in builds)
	deploy/docker/build.sh

standins: ## build local stand-ins for the base and third-party images (no registry reachable)
	deploy/docker/standins.sh

up: images ## run everything in containers and wait until healthy (UI http://localhost:8080)
	deploy/docker/up.sh

down: ## stop the containers and delete their volumes and network
	$(COMPOSE) down --volumes --remove-orphans

logs: ## follow the containers' logs (make logs s=gateway for one)
	$(COMPOSE) logs -f $(s)

e2e: ## build the images, start the stack, drive it over HTTP, tear it all down
	deploy/e2e/run.sh
