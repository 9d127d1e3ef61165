#!/usr/bin/env bash
# The whole test suite: set up, make sure Postgres and Redis run, lint, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
.venv/bin/ruff check .
scripts/check-compose.sh
# the docs build with every warning (a broken link, a page left out of the nav) an error
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
exec .venv/bin/python -m pytest "$@"
