#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) with pinned dependencies.
# Idempotent: a second call only checks that the installed lock still matches.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MEDFM_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.medfm-lock.sha256"
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating/updating virtual environment in $VENV (first run installs PyTorch from local files; a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q -r requirements.lock
"$VENV/bin/python" -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
echo "[setup] environment ready" >&2
