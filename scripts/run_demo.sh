#!/usr/bin/env bash
# Set up (or reuse) .venv, then run the whole workflow on the embedded default config
# (data, perturbations, pretraining, fine-tuning, evaluation, VLMs, tables, figures, report).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
snakemake --workflow-profile profiles/local "$@"
snakemake --workflow-profile profiles/local --report results/report.html "$@"
