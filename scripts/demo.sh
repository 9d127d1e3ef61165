#!/usr/bin/env bash
# The main job: set up, then train ERM vs mixup on noisy digits via the embedded stack.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/mixlab demo "$@"
