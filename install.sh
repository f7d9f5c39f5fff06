#!/usr/bin/env bash
# Install edgekit and everything it needs into the active Python (a fresh virtualenv is recommended).
# torch goes first and alone, pinned to the CPU build: letting the resolver pick torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
"$PY" -m pip install "torch==2.13.0"
"$PY" -m pip install -e ".[test]"
echo "edgekit installed: try 'edgekit export --device pixel4'"
