#!/usr/bin/env bash
# Set up, then run the main job (universe mode) over the default range on the embedded synthetic universe.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/finnex demo "$@"
