# Everything a newcomer runs: `make dev` (local stack) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo

.PHONY: help test lint fmt dev

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

test: ## Build and run every test
	infra/scripts/test-summary.sh $(CARGO) test --workspace --all-targets --locked

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

dev: ## Local stack (lands with the end-to-end issue)
	@echo "make dev: the local stack is not built yet; see README" >&2; exit 1
