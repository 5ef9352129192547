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
# Where PYTHONDONTWRITEBYTECODE is set (as on these machines) every process, each Dagster run and
# test worker included, would compile its imports again (~12 s of CPU a pipeline run): load what
# FinNeX loads once with bytecode writing on, so later processes read the cached .pyc.
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python scripts/precompile.py \
  || { echo "setup failed: the project does not import" >&2; exit 1; }
# Create or migrate the instance's storage (dagster instance migrate) and the MLflow store once,
# here, so that concurrent first uses (two backfills, two models in one run) never race to create them.
# (bytecode on: the instance and MLflow migrations load alembic and SQLAlchemy modules)
env -u PYTHONDONTWRITEBYTECODE .venv/bin/finnex init
