# Two set-up-and-go commands: `make run` (the main job) and `make test` (the whole test suite).
# Each creates .venv on first use and is a no-op install afterwards.
# GPU machines: `make run TORCH=torch` installs PyPI's default (CUDA) build instead of the CPU one.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: run test test-all lint bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.base

run: $(VENV)/.base
	$(BIN)/scratchllm pretrain $(ARGS)

test: $(VENV)/.test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

test-all: $(VENV)/.test
	$(BIN)/python -m pytest -m "slow or not slow"

$(VENV)/.bench: $(VENV)/.test
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	touch $@

# Every benchmark, each against its reference in the same run (about 20-30 minutes on 2 cores).
bench: $(VENV)/.bench
	$(BIN)/python benchmarks/bench_tokenizer.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_finetune.py
	$(BIN)/python benchmarks/bench_lora.py
	$(BIN)/python benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
