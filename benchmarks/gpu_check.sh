#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one JSON line per check. On a GPU machine with PyTorch and
# transformers installed it needs nothing else (the sources are used in place); `--device cpu` is the smoke test.
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--only pretrain,decode,serve,lora,tests] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
