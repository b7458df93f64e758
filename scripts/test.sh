#!/usr/bin/env bash
# Sets everything up, then runs the linters and the whole test suite (CPU only, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
