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

# llama.cpp (the peer of the GGUF tests and of the decode benchmark) is built from source, about 10 minutes on
# 2 cores, once per CPU kind, into a wheel folder of our own: pip's wheel cache ignores build flags, and a build
# for one x86 CPU kind crashes on the other. Its AMX kernels are left out (they fault with SIGILL on the AMX
# Xeons we test on); other CPUs (ARM) get llama.cpp's default native build.
LLAMA_CPP := llama-cpp-python==0.3.36
CPU_KIND := $(shell [ "$$(uname -m)" != x86_64 ] && echo native || (grep -qw avx512_bf16 /proc/cpuinfo && echo avx512 || echo avx2))
LLAMA_FLAGS_native :=
LLAMA_FLAGS_avx2 := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF
LLAMA_FLAGS_avx512 := $(LLAMA_FLAGS_avx2) -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
WHEELS := $(HOME)/.cache/scratchllm/wheels-$(CPU_KIND)

$(VENV)/.llama_cpp: | $(VENV)/.base
	ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		CMAKE_ARGS="$(LLAMA_FLAGS_$(CPU_KIND))" $(BIN)/python -m pip wheel -q --no-deps --no-cache-dir "$(LLAMA_CPP)" -w $(WHEELS)
	$(BIN)/python -m pip install -q --find-links $(WHEELS) --only-binary llama-cpp-python "$(LLAMA_CPP)"
	touch $@

$(VENV)/.test: $(VENV)/.base $(VENV)/.llama_cpp
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
