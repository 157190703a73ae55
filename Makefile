# Sophia Functions. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV     := .venv
PYTHON   := $(VENV)/bin/python
TOOLS    := $(VENV)/.tools-$(shell sha1sum tools/requirements.lock | cut -c1-12)
ARM64    := aarch64-unknown-linux-gnu
LAMBDA_DIR := target/lambda-arm64
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export CARGO_TERM_COLOR ?= auto

FN    ?= api-health
EVENT ?= health

.PHONY: help setup browser dev chaos token probe sweep drift secret-audit slo rotate fuzz api-fuzz test lint unit cfn-lint deploy-checks stack-checks stop-checks smoke build sizes invoke provision deploy rollback deploy-function bench clean

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

NODE_TOOLS := tools/node/node_modules/.package-lock.json

setup: $(TOOLS) $(NODE_TOOLS) ## install the pinned tools: .venv (cargo-lambda, zig, moto, cfn-lint, SDKs) and tools/node (MCP servers)
	@command -v rustup >/dev/null && rustup component add clippy rustfmt >/dev/null 2>&1 || true

# A real upstream MCP server for the federation tests and make dev (npm, pinned by the lockfile).
$(NODE_TOOLS): tools/node/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed for the MCP test servers (Debian: apt-get install nodejs npm)"; exit 2; }
	@echo "==> installing pinned Node tools into tools/node (npm ci)"
	@npm ci --prefix tools/node --no-audit --no-fund --loglevel=error

$(TOOLS): tools/requirements.lock
	@echo "==> installing pinned Python tools into $(VENV)"
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	@$(PYTHON) -m pip install --disable-pip-version-check --quiet --requirement tools/requirements.lock
	@rm -f $(VENV)/.tools-* && touch $@

dev: setup ## run everything locally: local AWS + 2 fleet simulators + cargo lambda watch on :9000
	@tools/dev.sh

token: ## print a fresh access token for the running `make dev` (tenant dev, every scope)
	@test -s $${SOPHIA_STATE_DIR:-.local}/dev-api-key || { echo "no dev API key: start the stack with 'make dev' first" >&2; exit 2; }
	@curl -fsS -X POST http://127.0.0.1:$${SOPHIA_PORT:-9000}/v1/auth/token -H 'content-type: application/json' \
		-d "{\"api_key\": \"$$(cat $${SOPHIA_STATE_DIR:-.local}/dev-api-key)\"}" \
		| python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'

test: setup lint unit cfn-lint deploy-checks stack-checks stop-checks ## every check CI runs: fmt, clippy, unit + integration tests, cfn-lint, the whole stack, stopping it
	@echo "==> all checks passed"
	@# What a prod deploy requires (tools/deploy-gate.sh): this commit passed, on a clean tree.
	@if [ -z "$$(git status --porcelain 2>/dev/null)" ] && git rev-parse HEAD > target/tested-commit 2>/dev/null; then \
		echo "    recorded $$(cut -c1-12 target/tested-commit) as tested (make deploy ENV=prod)"; fi

lint:
	@echo "==> cargo fmt --check"
	@cargo fmt --all --check
	@echo "==> cargo clippy -D warnings"
	@cargo clippy --workspace --all-targets --locked -- -D warnings

unit:
	@echo "==> cargo test (unit and integration; the harness starts its own local AWS)"
	@cargo test --workspace --locked

cfn-lint:
	@echo "==> cfn-lint infra/template.yaml"
	@$(VENV)/bin/cfn-lint infra/template.yaml

deploy-checks: setup ## the template translated offline (aws-sam-translator): every function canaried/shifted through alias `live` with a new-version rollback alarm
	@echo "==> safe-deploy checks of infra/template.yaml"
	@$(PYTHON) infra/deploy_checks.py
	@$(PYTHON) tools/rollback_check.py
	@echo "==> the CloudWatch dashboard and alarms read metrics the code emits"
	@$(PYTHON) infra/observability_checks.py

stack-checks: setup browser ## checks against a whole dev stack of their own (hooks, smoke, the dashboard in Chromium, API fuzzing); started and stopped here
	@tools/with-dev-stack.sh tools/stack-checks.sh

browser: ## Debian's Chromium for the dashboard's browser test (installed with apt-get when missing; needs root)
	@command -v chromium >/dev/null || { \
		[ "$$(id -u)" = 0 ] || { echo "the browser test needs Chromium: apt-get install chromium (as root)" >&2; exit 2; }; \
		echo "==> installing Debian's chromium (apt-get; a minute or two)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

CHAOS_SECONDS ?= 180
chaos: setup ## steady mixed traffic while faults come and go, on a dev stack of its own; invariants from the stored state (CHAOS_SECONDS, default 180; report in target/chaos-report.txt)
	@CHAOS_SECONDS=$(CHAOS_SECONDS) tools/with-dev-stack.sh tools/chaos.sh

stop-checks: setup ## make dev stopped by TERM/INT to its process group and TERM to make alone leaves no process and no port
	@tools/stop-checks.sh

BASE ?= http://127.0.0.1:$(or $(SOPHIA_PORT),9000)
smoke: ## the end-to-end journey against a stack: make smoke [BASE=<url>] (API key: SMOKE_API_KEY, else the dev stack's)
	@if [ -n "$${SMOKE_API_KEY:-}" ]; then key=""; else \
		key="--api-key-file $${SOPHIA_STATE_DIR:-.local}/dev-api-key"; \
		test -s $${SOPHIA_STATE_DIR:-.local}/dev-api-key || { echo "no API key: set SMOKE_API_KEY, or start the dev stack with 'make dev'" >&2; exit 2; }; fi; \
	cargo run -q --locked -p devtools --bin sophia-dev -- smoke --base "$(BASE)" $$key $(SMOKE_ARGS)

api-fuzz: setup ## schemathesis against the running `make dev` from its OpenAPI document (API_FUZZ_EXAMPLES, API_FUZZ_SECONDS)
	@tools/api-fuzz.sh

build: setup ## release arm64 zips of every function in target/lambda-arm64/<fn>/bootstrap.zip
	@command -v rustup >/dev/null && rustup target add $(ARM64) >/dev/null 2>&1 || true
	@echo "==> cargo lambda build --release --arm64 (several minutes from a clean target/)"
	@cargo lambda build --release --arm64 --output-format zip --lambda-dir $(LAMBDA_DIR) \
		$(addprefix --package ,$(notdir $(wildcard functions/*)))
	@$(MAKE) --no-print-directory sizes

sizes: ## zip size of every built function
	@for zip in $(LAMBDA_DIR)/*/bootstrap.zip; do \
		stat -c '%s %n' $$zip | awk '{split($$2, p, "/"); printf "  %-24s %6.2f MB\n", p[length(p)-1], $$1 / 1048576}'; \
	done

invoke: setup ## invoke a function under a running `make dev`: make invoke FN=api-chat EVENT=completion
	@tools/invoke.sh $(FN) $(EVENT)

provision: setup ## provision a running local AWS again (after editing infra/template.yaml)
	@$(PYTHON) infra/provision.py --endpoint http://127.0.0.1:$${SOPHIA_AWS_PORT:-5055} \
		--stack-name $${SOPHIA_STACK:-sophia-local} --env-file .local/dev.env

ENV ?= staging
STACK_staging := sophia-staging
STACK_prod := sophia-prod
STACK = $(STACK_$(ENV))
deploy: ## deploy to AWS with SAM through canaries: make deploy ENV=staging|prod (prod: clean tree that passed make test; README, Deploy)
	@tools/deploy-gate.sh $(ENV)
	@$(MAKE) --no-print-directory build
	@cd infra && sam build --beta-features && sam deploy --config-file samconfig.toml --config-env $(ENV) $(DEPLOY_ARGS)

rollback: setup ## move every function's alias `live` back (a shift in flight: stopped): make rollback ENV=staging|prod
	@test -n "$(STACK)" || { echo "ENV must be staging or prod (got '$(ENV)')" >&2; exit 2; }
	@$(PYTHON) tools/rollback.py --stack $(STACK) --region $${AWS_REGION:-us-east-1}

deploy-function: setup ## one function's code straight onto alias live of staging: make deploy-function FN=api-chat [DRY=1]
	@test -n "$(FN)" && test -d functions/$(FN) || { echo "FN must be one of: $(notdir $(wildcard functions/*))" >&2; exit 2; }
	@test "$(ENV)" = staging || { echo "deploy-function is for staging only: prod goes through make deploy ENV=prod (canary, alarms)" >&2; exit 2; }
	@echo "==> cargo lambda build --release --arm64 --package $(FN)"
	@PATH=$(CURDIR)/$(VENV)/bin:$$PATH cargo lambda build --release --arm64 --output-format zip --lambda-dir $(LAMBDA_DIR) --package $(FN)
	@PATH=$(CURDIR)/$(VENV)/bin:$$PATH cargo lambda deploy --lambda-dir $(LAMBDA_DIR) --binary-name $(FN) \
		--alias live --merge-env --region $${AWS_REGION:-us-east-1} $(if $(DRY),--dry) $(STACK)-$(FN)

probe: ## run job-fleet-probe once against the running `make dev` (shared fleet health)
	@tools/invoke.sh job-fleet-probe manual

slo: ## run job-slo-check once against the running `make dev` (burn rates from the local requests' metrics)
	@tools/invoke.sh job-slo-check scheduled

drift: ## run job-drift-detect once against the running `make dev` (live resources vs infra/template.yaml)
	@tools/invoke.sh job-drift-detect scheduled

rotate: ## run the four rotation steps of the dev stack's fleet token once (job-secret-rotate; replays are no-ops)
	@for step in createSecret setSecret testSecret finishSecret; do \
		echo "==> $$step"; tools/invoke.sh job-secret-rotate $$step || exit 1; echo; \
	done

secret-audit: ## run the daily secret-age audit of job-secret-rotate once against the running `make dev`
	@tools/invoke.sh job-secret-rotate secret-age-audit

sweep: ## run job-queue-sweep once against the running `make dev` (re-send stranded jobs, fail dead-lettered ones)
	@tools/invoke.sh job-queue-sweep scheduled

fuzz: ## property-based fuzzing of request parsing, the pipeline and token verification (FUZZ_CASES, default 20000)
	@echo "==> $${FUZZ_CASES:-20000} cases per property (bounded; stops by itself)"
	@PROPTEST_CASES=$${FUZZ_CASES:-20000} cargo test --locked -p sophia-shared --test hostile_input --test hostile_chat_request -- --test-threads 2

bench: setup ## benchmarks: cold start of the release binaries (see BENCHMARKS.md)
	@tools/bench.sh

clean: ## remove build output and local state (keeps .venv)
	@cargo clean
	@rm -rf .local
