#!/usr/bin/env bash
# Byte-identity check for refactoring commits (issue 16 req 8): run the CI test configuration
# (tests/config/ci.yaml) in a temporary copy of the working tree and print the SHA-256 of every output
# under results/ (tables, shards, metrics, checkpoints, figures). Compare two digests with `diff`.
#   bash scripts/output_digest.sh > before.sha256   # on the parent commit
#   bash scripts/output_digest.sh > after.sha256    # on the refactoring commit
#   diff before.sha256 after.sha256                  # empty = byte-identical
set -euo pipefail
# The repository is the git checkout of the current directory (so one copy of this script serves every
# worktree), else the one this script lives in.
repo="$(git rev-parse --show-toplevel 2>/dev/null || (cd "$(dirname "$0")/.." && pwd))"
venv="${MEDFM_VENV:-$repo/.venv}"
[ -x "$venv/bin/snakemake" ] || venv="$(cd "$(dirname "$0")/.." && pwd)/.venv"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$repo"
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue
  mkdir -p "$work/$(dirname "$f")"; cp -p "$f" "$work/$f"
done
cd "$work"
PYTHONPATH="$work/src" PATH="$venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg \
  OMP_NUM_THREADS=1 snakemake --configfile tests/config/ci.yaml --cores "${DIGEST_CORES:-1}" -q \
  >"$work/.digest.log" 2>&1 || { tail -40 "$work/.digest.log" >&2; exit 1; }
# Skip files that carry wall-clock times or absolute paths by design (logs, benchmarks, the HTML report).
find results -type f ! -name '*.log' ! -name '*.html' ! -path '*/benchmarks/*' -print0 | sort -z \
  | xargs -0 sha256sum
