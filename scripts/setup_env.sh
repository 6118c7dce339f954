#!/usr/bin/env bash
# Create .venv and install the pinned environment; a no-op when requirements are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating/updating .venv with $($PY --version) (first run: ~3 min)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --no-deps -e . >.venv/editable-install.log 2>&1 || { cat .venv/editable-install.log; exit 1; }
.venv/bin/python -c "import torch, open_clip, lightning, schedulefree, jupyter_book, papermill" \
  || { echo "[setup] install failed: see the pip output above"; exit 1; }
echo "$want" > "$stamp"
