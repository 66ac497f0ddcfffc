#!/usr/bin/env bash
# Set up (or reuse) .venv, then run ruff and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
ruff check src tests workflow benchmarks
python -m pytest "$@"
