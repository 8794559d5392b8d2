#!/usr/bin/env bash
# The main job: set up, then run the headline experiment (configs/demo.yaml) on the built-in corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kinherit experiment "${1:-configs/demo.yaml}"
