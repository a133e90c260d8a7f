#!/usr/bin/env bash
# README command 2: set up, lint (ruff), then run the whole test suite offline (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check spillover tests bench
exec python -m pytest -q "$@"
