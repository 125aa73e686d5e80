#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite:
#   1. the front end: lint, build and Vitest unit tests (webapp/frontend);
#   2. every notebook under nbval on the smoke profile, in a temporary project root;
#   3. the pytest suite (extra arguments go to this step): library, CLI, training,
#      the web API over real HTTP (on SQLite and on a throw-away PostgreSQL, two
#      instances included), the page in headless Chromium, and the
#      figures/tables/REPORT.md that step 2 produced.
# ECGPAPER_SKIP_NOTEBOOKS=1 skips step 2 (tests/test_notebooks.py then runs them itself).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
source scripts/build_frontend.sh

if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing Debian's chromium for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[warn] could not install chromium: the browser test will be skipped" >&2
fi

# the web API tests also run on a throw-away PostgreSQL (ecgpaper/serve/devdb.py: initdb + pg_ctl
# in a temporary folder, loopback only); Debian keeps them in /usr/lib/postgresql/<v>/bin
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing Debian's postgresql for the PostgreSQL tests of the web service"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "[warn] could not install postgresql: the PostgreSQL tests will be skipped" >&2
fi

echo "== front end: lint, build, unit tests"
build_frontend
(cd webapp/frontend && npm run --silent lint && npm test --silent)

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
