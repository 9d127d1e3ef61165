#!/usr/bin/env bash
# The whole test suite: set up, make sure Postgres and Redis run, lint, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
.venv/bin/ruff check .
scripts/check-compose.sh
exec .venv/bin/python -m pytest "$@"
