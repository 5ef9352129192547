#!/usr/bin/env bash
# Create .venv (once) and install the project with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# --no-compile: byte-compiling ~400 packages costs minutes on 2 cores and buys nothing here.
.venv/bin/pip install --no-compile -q --disable-pip-version-check -e '.[dev]' 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import finnex_ml, finnex_assets, torch, dagster" \
  || { echo "setup failed: the project does not import" >&2; exit 1; }
# Create or migrate the instance's storage (dagster instance migrate) and the MLflow store once,
# here, so that concurrent first uses (two backfills, two models in one run) never race to create them.
.venv/bin/finnex init
