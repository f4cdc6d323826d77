#!/usr/bin/env bash
# Create or refresh .venv from requirements/lock.txt. Idempotent: a stamp holding the lock's
# hash skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
lock_hash=$( (cat requirements/lock.txt pyproject.toml) | sha256sum | cut -c1-16)
stamp=.venv/.bevt-lock-$lock_hash
if [ -f "$stamp" ] && .venv/bin/python -c "import bevt_core" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "[setup] installing pinned packages into .venv (first time: a few minutes, ~6 GB)"
# --no-deps: the lock is the complete, resolved set; torch can never be re-resolved.
.venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements/lock.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
rm -f .venv/.bevt-lock-*
touch "$stamp"
echo "[setup] .venv ready"
