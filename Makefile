# The two commands a newcomer runs: `make dev` (the local stack) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed
# moto from the virtualenv, without its per-request overheads (infra/scripts/moto_server.py).
MOTO := infra/scripts/moto-server

BUILD_STAMP := $(VENV)/.installed-build
DEPLOY_STAMP := $(VENV)/.installed-deploy
FUZZ_STAMP := $(VENV)/.installed-fuzz
LAMBDA_TARGET := aarch64-unknown-linux-gnu
FUNCTIONS := submit webhook fetch-result reconciler copier callbacks drainer

.PHONY: help dev demo key revoke reconcile test bench soak load cost fuzz lint fmt venv build validate deploy clean-venv

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV_STAMP): infra/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/requirements.txt
	touch $@

venv: $(VENV_STAMP) ## Python tools (moto, cfn-lint) in .venv

dev: $(VENV_STAMP) ## Local stack on http://127.0.0.1:3000 (DEV_PORT): moto, Replicate simulator, API
	$(CARGO) build --locked -p local-stack --bin dev-server
	$(CARGO) build --locked $(addprefix -p ,$(FUNCTIONS))
	MOTO_SERVER=$(MOTO) exec target/debug/dev-server

demo: ## Submit PROMPT to the running local stack and save the image [IMAGE=file: upload it, img2img] [CALLBACK=1: receive a signed callback]
	$(CARGO) run --locked -q -p local-stack --bin demo -- $(if $(IMAGE),--image "$(IMAGE)") $(if $(CALLBACK),--callback) $(PROMPT)

key: ## New API key: make key TENANT=<name> [RATE=<per minute>] [BUDGET=<usd>|none] (the tenant's limits; make dev's stack, or TABLE_NAME in AWS)
	$(CARGO) run --locked -q -p local-stack --bin keys -- create --tenant "$(TENANT)" $(if $(RATE),--rate "$(RATE)") $(if $(BUDGET),--budget "$(BUDGET)")

revoke: ## Revoke an API key: make revoke KEY_ID=<id> (refused everywhere within 60 s)
	$(CARGO) run --locked -q -p local-stack --bin keys -- revoke "$(KEY_ID)"

reconcile: ## One reconcile pass against the stack the environment names (TABLE_NAME, …)
	$(CARGO) run --locked -q -p local-stack --bin reconcile

test: $(VENV_STAMP) ## Build and run every test (starts and stops its own moto server)
	$(CARGO) build --locked --workspace --exclude harness --tests $(addprefix --bin ,$(FUNCTIONS)) # as tests/src/lib.rs selects: built once
	MOTO_SERVER=$(MOTO) infra/scripts/with-moto.sh \
		infra/scripts/test-summary.sh $(CARGO) test --workspace --tests --locked

$(FUZZ_STAMP): $(VENV_STAMP) infra/requirements-fuzz.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/requirements-fuzz.txt
	touch $@

fuzz: $(FUZZ_STAMP) ## schemathesis against the local stack from the OpenAPI document (FUZZ_SECONDS, 60): every check, positive and negative data
	$(CARGO) build --locked -q -p local-stack --bin dev-server
	$(CARGO) build --locked -q $(addprefix -p ,$(FUNCTIONS))
	infra/scripts/fuzz.sh

$(BUILD_STAMP): $(VENV_STAMP) infra/requirements-build.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/requirements-build.txt
	touch $@

$(DEPLOY_STAMP): $(VENV_STAMP) infra/requirements-deploy.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/requirements-deploy.txt
	touch $@

build: $(BUILD_STAMP) ## Three arm64 Lambda bootstraps in target/lambda/<function>/
	rustup target list --installed | grep -qx $(LAMBDA_TARGET) || rustup target add $(LAMBDA_TARGET)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(CARGO) lambda build --release --arm64 --locked $(addprefix -p ,$(FUNCTIONS))
	@for f in $(FUNCTIONS); do ls -l target/lambda/$$f/bootstrap; done

validate: $(VENV_STAMP) ## Lint the SAM template (cfn-lint, offline)
	$(VENV)/bin/cfn-lint template.yaml

deploy: $(BUILD_STAMP) $(DEPLOY_STAMP) ## sam build + sam deploy (guided the first time)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/sam build --beta-features
	if [ -f samconfig.toml ]; then $(VENV)/bin/sam deploy; else $(VENV)/bin/sam deploy --guided; fi

bench: $(VENV_STAMP) ## Print measured figures: peak memory storing large outputs; release binaries against a minimal handler (init; init + first request; CPU per warm request); API-key check latency
	$(CARGO) test --locked -q -p integration-tests --test memory -- --nocapture
	$(CARGO) build --locked -q --release -p submit -p fetch-result -p minimal-handler
	$(CARGO) run --locked -q -p local-stack --bin cold-start -- --against target/release/minimal-handler target/release/fetch-result 20
	$(CARGO) run --locked -q -p local-stack --bin cold-start -- --against target/release/minimal-handler target/release/submit 20
	$(CARGO) build --locked -q -p harness --bin request-bench
	MOTO_SERVER=$(MOTO) infra/scripts/with-moto.sh target/debug/request-bench target/release
	$(CARGO) build --locked -q -p harness --bin auth-bench
	MOTO_SERVER=$(MOTO) infra/scripts/with-moto.sh target/debug/auth-bench

soak: $(VENV_STAMP) ## A few hundred submissions under injected faults; prints lost/duplicates/wrong states
	$(CARGO) build --locked -q -p harness --bin soak
	MOTO_SERVER=$(MOTO) infra/scripts/with-moto.sh target/debug/soak

load: $(VENV_STAMP) ## 2,000 submissions in a minute through the release binaries against a 600-a-minute create limit; prints queued, lost, duplicated, drain time vs ideal, latency
	$(CARGO) build --locked -q --release $(addprefix -p ,$(FUNCTIONS))
	$(CARGO) build --locked -q --profile load -p harness --bin load
	DEV_FUNCTION_PROCESSES=$${DEV_FUNCTION_PROCESSES:-4} MOTO_SERVER=$(MOTO) infra/scripts/with-moto.sh target/load/load

cost: $(VENV_STAMP) ## AWS cost per 1,000 images by component, next to Replicate's price (COST_COUNT predictions)
	$(CARGO) build --locked -q -p harness --bin cost
	MOTO_SERVER=$(MOTO) infra/scripts/with-moto.sh target/debug/cost

lint: ## rustfmt check, clippy with warnings as errors, no second version of a chosen crate
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	infra/scripts/check-duplicates.sh

fmt: ## Format the code
	$(CARGO) fmt --all

clean-venv: ## Remove the Python virtualenv
	rm -rf $(VENV)
