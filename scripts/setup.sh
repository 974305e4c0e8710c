#!/usr/bin/env bash
# Creates .venv and installs keras-inception with all three backends (CPU builds)
# and the test and documentation tools. constraints/cpu.txt pins torch to its CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints/cpu.txt -e ".[all,test,docs]"
# Its only declared requirement we lack is the `tensorflow` wheel (we have
# tensorflow-cpu); its protos need nothing else.
.venv/bin/python -m pip install -q -c constraints/cpu.txt --no-deps tensorflow-serving-api
echo "Installed into $(pwd)/.venv"
