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
# System packages some features and their tests use, installed with apt-get as
# root (or through passwordless sudo); without them a note says what is missing.
apt_install() {  # PACKAGE WHY-IT-IS-NEEDED
  local as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && $as_root true 2>/dev/null; then
    echo "installing $1 (apt-get) for $2" >&2
    if $as_root apt-get install -y -q "$1" >/dev/null 2>&1 \
        || { $as_root apt-get update -q >/dev/null 2>&1 \
             && $as_root apt-get install -y -q "$1" >/dev/null 2>&1; }; then
      return 0
    fi
  fi
  echo "note: could not install $1 ('apt-get install $1' as root): $2 will be unavailable" >&2
  return 1
}
FASHION_MNIST_DIR=${MIXLAB_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  if [ "$FASHION_MNIST_DIR" = /usr/share/datasets/fashion-mnist ]; then
    apt_install dataset-fashion-mnist "the fashion-mnist built-in and its tests" || true
  else
    echo "note: $FASHION_MNIST_DIR has no Fashion-MNIST files; set MIXLAB_FASHION_MNIST_DIR" \
         "to a folder that has them" >&2
  fi
fi
# The dashboard's browser tests (tests/browser) drive Debian's Chromium through
# Playwright (Playwright's own browser download is not used).
if [ ! -x "${MIXLAB_CHROMIUM:-/usr/bin/chromium}" ]; then
  apt_install chromium "the dashboard's browser tests (or set MIXLAB_CHROMIUM)" || true
fi
# training.compile: torch.compile's CPU backend builds its kernels with a C++ compiler
if ! command -v g++ >/dev/null 2>&1; then
  apt_install g++ "training.compile on CPU workers and its test" || true
fi
