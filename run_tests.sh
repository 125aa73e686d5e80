#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
python -m pytest "$@"
