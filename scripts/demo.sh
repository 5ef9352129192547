#!/usr/bin/env bash
# Set up, then run the main job over the default range on the embedded default (synthetic) data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/finnex demo "$@"
