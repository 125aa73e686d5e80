#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite:
#   1. every notebook under nbval on the smoke profile, in a temporary project root;
#   2. the pytest suite (extra arguments go to this step), which also checks the
#      figures, tables and REPORT.md that step 1 produced.
# ECGPAPER_SKIP_NOTEBOOKS=1 skips step 1 (tests/test_notebooks.py then runs them itself).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
if [ "${ECGPAPER_SKIP_NOTEBOOKS:-0}" != "1" ]; then
  NB_ROOT="$(mktemp -d -t ecgpaper-notebooks-XXXXXX)"
  trap 'rm -rf "$NB_ROOT"' EXIT
  echo "== notebooks under nbval (smoke profile, outputs in $NB_ROOT)"
  ECGPAPER_PROFILE=smoke ECGPAPER_ROOT="$NB_ROOT" python -m pytest --nbval-lax --nbval-current-env \
    --nbval-cell-timeout 1200 -p no:cacheprovider -q notebooks/
  export ECGPAPER_NOTEBOOK_RUN="$NB_ROOT"
fi
echo "== test suite"
python -m pytest "$@"
