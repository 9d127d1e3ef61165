#!/usr/bin/env bash
# Create .venv with the CPU build of torch and mixlab (editable, with dev tools).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
# torch first, pinned to the CPU build: pyproject declares a range, and a bare
# requirement would otherwise pull the multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "installing torch==2.13.0 (CPU build)" >&2
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
fi
# pip's own chatter (editable-install notices) goes to a log, shown only on failure
if ! .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]" > .venv/pip.log 2>&1; then
  cat .venv/pip.log >&2
  exit 1
fi
.venv/bin/python -c "import app.ml, app.api.main" >/dev/null
