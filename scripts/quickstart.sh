#!/usr/bin/env bash
# README command 1: set up, then run the quickstart on the embedded model (offline, a few minutes on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec spillover quickstart "$@"
