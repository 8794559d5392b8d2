#!/usr/bin/env bash
# Set up, then run the test suite (the slow end-to-end runs are behind `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
