#!/usr/bin/env bash
# Create .venv (once) and install the project with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# --no-compile: byte-compiling all ~400 packages costs minutes on 2 cores; the import below
# compiles only what FinNeX loads.
.venv/bin/pip install --no-compile -q --disable-pip-version-check -e '.[dev]' 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
# One import with bytecode writing on caches the .pyc of exactly the modules every FinNeX process
# loads: where PYTHONDONTWRITEBYTECODE is set (as on these machines) each process, every Dagster run
# and test worker included, would otherwise compile dagster, torch and mlflow again (~6 s of CPU).
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -W ignore -c \
  "import finnex_ml, finnex_assets.definitions, finnex_assets.cli, torch, dagster, mlflow, sklearn, arch.bootstrap, statsmodels.api" \
  || { echo "setup failed: the project does not import" >&2; exit 1; }
# Create or migrate the instance's storage (dagster instance migrate) and the MLflow store once,
# here, so that concurrent first uses (two backfills, two models in one run) never race to create them.
.venv/bin/finnex init
