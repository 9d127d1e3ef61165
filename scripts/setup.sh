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
# The vision extra (model kinds torchvision and timm), as pyproject.toml pins it, with
# --no-deps: pip must not replace the CPU torch; what they need besides is installed.
VISION=$(.venv/bin/python -c "import tomllib; print(' '.join(tomllib.load(open(
    'pyproject.toml', 'rb'))['project']['optional-dependencies']['vision']))")
# shellcheck disable=SC2086  # one word per requirement
if ! .venv/bin/pip install -q --disable-pip-version-check --no-deps $VISION \
    > .venv/pip-vision.log 2>&1; then
  cat .venv/pip-vision.log >&2
  exit 1
fi
.venv/bin/python -c "import app.ml, app.api.main" >/dev/null
.venv/bin/python -c "from app.ml.models import timm_available, torchvision_available as tv
assert tv() and timm_available(), 'torchvision/timm do not import'"
# The fashion-mnist built-in reads Debian's dataset-fashion-mnist files (nothing is
# downloaded at run time). Installed here when we can (root with apt-get); never fatal.
FASHION_MNIST_DIR=${MIXLAB_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  # as root, or through passwordless sudo
  if [ "$(id -u)" = 0 ]; then AS_ROOT=""; else AS_ROOT="sudo -n"; fi
  if [ "$FASHION_MNIST_DIR" = /usr/share/datasets/fashion-mnist ] \
      && command -v apt-get >/dev/null 2>&1 && $AS_ROOT true 2>/dev/null; then
    echo "installing dataset-fashion-mnist (apt-get)" >&2
    if ! { $AS_ROOT apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
           || { $AS_ROOT apt-get update -q >/dev/null 2>&1 \
                && $AS_ROOT apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; then
      echo "note: could not install dataset-fashion-mnist; the fashion-mnist built-in" \
           "(and its tests) will be unavailable" >&2
    fi
  else
    echo "note: $FASHION_MNIST_DIR has no Fashion-MNIST files; for the fashion-mnist" \
         "built-in run 'apt-get install dataset-fashion-mnist' as root (Debian/Ubuntu)" \
         "or set MIXLAB_FASHION_MNIST_DIR" >&2
  fi
fi
# The dashboard's browser tests (tests/browser) drive Debian's Chromium through
# Playwright (Playwright's own browser download is not used). Installed here as root.
if [ ! -x "${MIXLAB_CHROMIUM:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = 0 ]; then AS_ROOT=""; else AS_ROOT="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1 && $AS_ROOT true 2>/dev/null; then
    echo "installing chromium (apt-get) for the dashboard's browser tests" >&2
    if ! { $AS_ROOT apt-get install -y -q chromium >/dev/null 2>&1 \
           || { $AS_ROOT apt-get update -q >/dev/null 2>&1 \
                && $AS_ROOT apt-get install -y -q chromium >/dev/null 2>&1; }; }; then
      echo "note: could not install chromium; tests/browser will fail until it is" \
           "installed (or MIXLAB_CHROMIUM names a Chromium binary)" >&2
    fi
  else
    echo "note: no Chromium at /usr/bin/chromium: tests/browser need it ('apt-get install" \
         "chromium' as root, or set MIXLAB_CHROMIUM)" >&2
  fi
fi
