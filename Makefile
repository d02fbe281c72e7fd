# A newcomer needs two commands: `make demo` and `make test`. Both build their own virtualenv.
SHELL := /bin/bash
# The Lambda runtime is python3.12: use it when this machine has one (pyenv's included), else python3.
PYTHON ?= $(shell for p in $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3) python3.12 python3; do \
	  "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo "$$p"; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt layers/forge_remote/requirements.txt | sha1sum | cut -c1-12)
export AWS_DEFAULT_REGION ?= us-east-1
export PYTHONDONTWRITEBYTECODE := 1
export SAM_CLI_TELEMETRY := 0

.PHONY: venv demo local test lint format unit bench sam-validate build clean

$(STAMP): requirements-dev.txt layers/forge_remote/requirements.txt
	@echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"
	@rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(STAMP)

demo: venv  ## the whole function set on this machine, playing the expired-token story
	$(BIN)/python -m local.demo

local: venv  ## the same stack left running on 127.0.0.1 (see README "Local development")
	$(BIN)/python -m local.serve $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/forge_remote/forge_remote functions local bench
	$(BIN)/cfn-lint template.yaml

unit: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint unit  ## lint, type-check, template lint, and every test

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv  ## figures and ratios, side by side in one run
	$(BIN)/python -m bench $(ARGS)

# SAM CLI pins its own boto3, so it lives in a venv of its own.
.venv-sam/.installed:
	$(PYTHON) -m venv .venv-sam && .venv-sam/bin/pip install --quiet aws-sam-cli==1.170.0 && touch $@

sam-validate: .venv-sam/.installed
	.venv-sam/bin/sam validate --lint --template template.yaml

build: .venv-sam/.installed  ## sam build (needs python3.12 on PATH; no Docker needed)
	PATH="$(dir $(PYTHON)):$$PATH" .venv-sam/bin/sam build

clean:
	rm -rf $(VENV) .venv-sam .aws-sam .pytest_cache .mypy_cache .ruff_cache .hypothesis .cache
