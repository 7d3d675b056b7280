# memproc: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
TOOLS  ?= .tools
PY     := $(VENV)/bin/python
PORT   ?= 5001
STAMP  := $(VENV)/.installed
TOOLS_STAMP := $(TOOLS)/.installed

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml layers/common/requirements.txt
	@test -x $(PY) || $$(scripts/find_python.sh) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP) ## Create .venv (python3.13 where installed) and install memproc with dev extras

redis: ## Obtain a Redis 8 with vector sets (REDIS_URL, PATH, cache, or a build of Debian's source)
	@scripts/provision_redis.sh --binary

test: $(STAMP) ## Set everything up and run the whole test suite against real Redis servers
	MEMPROC_REDIS_SERVER=$$(scripts/provision_redis.sh --binary) $(PY) -m pytest $(PYTEST_ARGS)

dev: $(STAMP) ## Set everything up; serve the API on http://localhost:5001 (PORT=...) with the processor running
	MEMPROC_REDIS_SERVER=$$(scripts/provision_redis.sh) $(VENV)/bin/memproc serve --port $(PORT)

bench: $(STAMP) ## Benchmarks vs real Redis 8 + fake LLM -> bench/results/<date>/ (~8 min; FULL=1: larger sizes)
	MEMPROC_REDIS_SERVER=$$(scripts/provision_redis.sh --binary) $(PY) -m bench.run $(if $(FULL),--full,)

check: $(STAMP) ## ruff + mypy
	$(VENV)/bin/ruff check layers local functions tests bench scripts
	$(VENV)/bin/ruff format --check layers local functions tests bench scripts
	$(VENV)/bin/mypy

clean: ## Remove the venvs and build output (the Redis build cache in ~/.cache/memproc stays)
	rm -rf $(VENV) $(TOOLS) .aws-sam

.PHONY: help venv redis test dev bench check clean

# --- AWS tooling (SAM CLI + cfn-lint) in their own venv: the SAM CLI pins its own boto3/pydantic. ---
SAM      := SAM_CLI_TELEMETRY=0 $(TOOLS)/bin/sam
CFN_LINT := $(TOOLS)/bin/cfn-lint
# sam's python3.13 build workflow looks up `python3.13` on PATH; a pyenv shim there fails unless 3.13
# is the active version, so the real interpreter's bin dir goes first.
PY313_BIN = $(shell dirname "$$(scripts/find_python.sh)")

$(TOOLS_STAMP): scripts/find_python.sh
	@test -x $(TOOLS)/bin/python || $$(scripts/find_python.sh) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --upgrade pip
	$(TOOLS)/bin/python -m pip install -q 'aws-sam-cli>=1.140' 'cfn-lint>=1.20'
	@touch $@

tools: $(TOOLS_STAMP) ## Create .tools (AWS SAM CLI + cfn-lint, separate from .venv)

lint: $(TOOLS_STAMP) ## sam validate --lint + cfn-lint on template.yaml (zero findings required)
	$(SAM) validate --lint
	$(CFN_LINT) template.yaml

build: $(TOOLS_STAMP) ## sam build (functions + CommonLayer with memproc and its deps) into .aws-sam/
	PATH="$(PY313_BIN):$$PATH" $(SAM) build
	@test -d .aws-sam/build/CommonLayer/python/memproc || { echo "build: memproc missing from CommonLayer" >&2; exit 1; }
	@# The dev server, the CLI and PyYAML/werkzeug are local-only (local/memproc_local): never in the layer.
	@local_only=$$(cd .aws-sam/build/CommonLayer/python && find . -maxdepth 2 \( -path './memproc_local*' \
	    -o -path './memproc/localapi*' -o -path './memproc/cli.py' -o -path ./yaml -o -path ./_yaml \
	    -o -ipath './pyyaml*' -o -ipath './werkzeug*' \) -print); \
	  test -z "$$local_only" || { echo "build: local-only code in CommonLayer:" $$local_only >&2; exit 1; }
	@echo "CommonLayer: $$(ls .aws-sam/build/CommonLayer/python | wc -l) entries in .aws-sam/build/CommonLayer/python"

deploy: build ## sam deploy with samconfig.toml (first time: .tools/bin/sam deploy --guided)
	$(SAM) deploy

.PHONY: tools lint build deploy
