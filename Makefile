# A newcomer needs two commands: `make demo` and `make test`. Both build their own virtualenv.
# `make` alone lists every target: each one's `## ` comment is its line in that list.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# The Lambda runtime is python3.12: use it when this machine has one (pyenv's included), else python3.
PYTHON ?= $(shell for p in $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3) python3.12 python3; do \
	  "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo "$$p"; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
# The layer's package is installed from pyproject.toml: its [build-system], [project], [tool.setuptools.*] and
# [tool.distutils.*] tables are part of what the venv is built from (the other tools' settings are not).
PACKAGE_ENTRY := awk '/^\[/ { keep = /^\[(build-system|project|tool\.setuptools|tool\.distutils)[].]/ } keep' pyproject.toml
STAMP := $(VENV)/.installed-$(shell { cat requirements-dev.txt layers/forge_remote/requirements.txt; $(PACKAGE_ENTRY); } | sha1sum | cut -c1-12)
export AWS_DEFAULT_REGION ?= us-east-1
export PYTHONDONTWRITEBYTECODE := 1
export SAM_CLI_TELEMETRY := 0

.PHONY: help venv chromium demo local test lint format unit lambda-runtime bench lock sam-validate checkov build clean

# No prerequisites: listing the targets must work before anything is installed.
help:  ## list these targets (what plain `make` does)
	@echo "usage: make TARGET   (new here? make demo, then make test: both build .venv themselves)"
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  %-15s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# Dependencies from the pinned files, then the layer's package (forge_remote, from layers/forge_remote/),
# editable and without dependencies: local/, bench/ and the tests import it with no path of their own.
$(STAMP): requirements-dev.txt layers/forge_remote/requirements.txt
	@echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"
	@rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned dependencies into $(VENV) (about 1-2 min the first time, quiet until done)"
	@$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r layers/forge_remote/requirements.txt
	@$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

venv: $(STAMP)  ## build .venv from the pinned requirements (the targets below do it themselves)

demo: venv  ## the whole function set on this machine, playing the expired-token story
	$(BIN)/python -m local.demo

local: venv  ## the same stack left running on 127.0.0.1:8787 for the Forge emulator CLI (ARGS=--help)
	$(BIN)/python -m local.serve $(ARGS)

lint: venv  ## ruff, ruff format --check, strict mypy and cfn-lint, no tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/forge_remote/forge_remote functions local bench
	$(BIN)/cfn-lint template.yaml

# The status page's browser tests drive Debian's Chromium, never a downloaded browser; they fail without it.
chromium:  ## Debian's Chromium for the browser tests, installed with apt-get (root or sudo) if missing
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the status page's browser tests"; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

unit: venv chromium  ## every test, no lint (PYTEST_ARGS="tests/unit" or "-k name" picks some)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Lambda's own runtime client (awslambdaric) running each function from the built artifacts, over a loopback
# Runtime API: handler strings, imports and the layer's layout exactly as Lambda loads them (needs python3.12).
lambda-runtime: venv  ## every function run by awslambdaric from its Lambda artifact, answering its sample events
	$(BIN)/python .ci/lambda_runtime.py

test: lint checkov unit lambda-runtime  ## lint, type-check, template lint, checkov, every test, the Lambda runtime run

format: venv  ## ruff --fix and ruff format, in place
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv  ## figures and ratios, side by side in one run (ARGS=--quick: about 3 min)
	$(BIN)/python -m bench $(ARGS)

# The runtime lock: uv resolves requirements.in for Python 3.12 on every platform (Lambda's arm64, this
# machine's x86_64, a Mac) with the hash of every file; nothing else here needs uv, so it has its own venv.
.venv-lock/.installed:
	@echo "installing uv into .venv-lock (a few seconds, once)"
	$(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet uv==0.13.8 && touch $@

lock: .venv-lock/.installed  ## re-resolve layers/forge_remote/requirements.txt (pins + hashes) from requirements.in
	.venv-lock/bin/uv pip compile layers/forge_remote/requirements.in --universal --python-version 3.12 \
	  --generate-hashes --custom-compile-command "make lock" --quiet -o layers/forge_remote/requirements.txt

# SAM CLI pins its own boto3, so it lives in a venv of its own.
.venv-sam/.installed:
	@echo "installing SAM CLI into .venv-sam (about 1 min, once)"
	$(PYTHON) -m venv .venv-sam && .venv-sam/bin/pip install --quiet aws-sam-cli==1.170.0 && touch $@

sam-validate: .venv-sam/.installed  ## sam validate --lint of template.yaml (SAM CLI in .venv-sam)
	.venv-sam/bin/sam validate --lint --template template.yaml

# checkov pins many packages of its own (boto3 among them), so it too has a venv of its own. Every finding
# accepted is skipped on its resource in template.yaml with the reason (tests/integration/test_template_security.py).
# --quiet lists only the failed checks, after the counts (passed, failed, skipped); any failed check fails.
.venv-checkov/.installed:
	@echo "installing checkov into .venv-checkov (about 1 min, once)"
	$(PYTHON) -m venv .venv-checkov && .venv-checkov/bin/pip install --quiet --disable-pip-version-check checkov==3.3.30 && touch $@

# Twice: the template as written (its SAM resources) and as the SAM transform makes it (the roles, permissions,
# schedules and event invoke configs CloudFormation is asked to create; Metadata, with the skips, passes through).
checkov: venv .venv-checkov/.installed  ## checkov's CloudFormation checks of template.yaml and its SAM transform; fails on any failed check
	.venv-checkov/bin/checkov -f template.yaml --framework cloudformation --skip-download --compact --quiet
	$(BIN)/python -m local.sam_transform .cache/transformed-template.json
	.venv-checkov/bin/checkov -f .cache/transformed-template.json --framework cloudformation --skip-download --compact --quiet

build: .venv-sam/.installed  ## sam build (needs python3.12 on PATH; no Docker needed)
	PATH="$(dir $(PYTHON)):$$PATH" .venv-sam/bin/sam build

clean:  ## remove .venv, .venv-sam, .venv-checkov, .aws-sam and every cache
	rm -rf $(VENV) .venv-sam .venv-checkov .venv-lock .aws-sam .pytest_cache .mypy_cache .ruff_cache .hypothesis .cache layers/*.egg-info
