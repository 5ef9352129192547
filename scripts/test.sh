#!/usr/bin/env bash
# Set up, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# lint and format first: seconds, and a failure names the file and line
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# both cores, one test file per worker at a time (module fixtures are built once); slowest files
# first (tests/conftest.py). Pass -n 0 to run in one process.
exec .venv/bin/pytest -q -n 2 --dist loadfile "$@"
