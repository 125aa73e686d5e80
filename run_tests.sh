#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite:
#   0. start the paper profile's path in miniature in the background (see 2);
#   1. the front end: lint, build and Vitest unit tests (webapp/frontend);
#   2. every notebook under nbval on the smoke profile, in a temporary project root,
#      while the paper profile's path runs in miniature in the background (every
#      notebook on the paper-mini profile: tests/support/imagenet_mirror.py; much of a
#      small run is single-threaded graph tracing, so the two share the cores well);
#   3. the pytest suite (extra arguments go to this step): library, CLI, training,
#      the web API over real HTTP (on SQLite and on a throw-away PostgreSQL, two
#      instances included), the page in headless Chromium, and the
#      figures/tables/REPORT.md that step 2 produced.
#      and, last, tests/test_paper_mini.py on the miniature's results.
# ECGPAPER_SKIP_NOTEBOOKS=1 skips step 2 (tests/test_notebooks.py and tests/test_paper_mini.py
# then run them themselves when selected).
set -euo pipefail
cd "$(dirname "$0")"
T0=$(date +%s)
# the CI budget is 30 minutes on 2 cores: every phase prints when it starts (minutes:seconds)
phase() { local s=$(( $(date +%s) - T0 )); printf '== [%d:%02d] %s\n' $((s / 60)) $((s % 60)) "$1"; }
source scripts/bootstrap.sh
source scripts/build_frontend.sh

if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing Debian's chromium for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[warn] could not install chromium: the browser test will be skipped" >&2
fi

# the web API tests also run on a throw-away PostgreSQL (tests/support/devdb.py: initdb + pg_ctl
# in a temporary folder, loopback only); Debian keeps them in /usr/lib/postgresql/<v>/bin
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing Debian's postgresql for the PostgreSQL tests of the web service"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "[warn] could not install postgresql: the PostgreSQL tests will be skipped" >&2
fi

MINI_PID=""
if [ "${ECGPAPER_SKIP_NOTEBOOKS:-0}" != "1" ]; then
  NB_ROOT="$(mktemp -d -t ecgpaper-notebooks-XXXXXX)"
  MINI_ROOT="$(mktemp -d -t ecgpaper-paper-mini-XXXXXX)"
  trap 'if [ -n "$MINI_PID" ]; then kill "$MINI_PID" 2>/dev/null || true; fi; rm -rf "$NB_ROOT" "$MINI_ROOT"' EXIT
  # started first: it is the longest job, and the front end's npm steps leave a core to it
  phase "the paper profile in miniature, in the background (paper-mini, log in $MINI_ROOT/out.log)"
  python tests/support/imagenet_mirror.py "$MINI_ROOT" >"$MINI_ROOT/out.log" 2>&1 &
  MINI_PID=$!
fi

phase "front end: lint, build, unit tests"
build_frontend
(cd webapp/frontend && npm run --silent lint && npm test --silent)

if [ "${ECGPAPER_SKIP_NOTEBOOKS:-0}" != "1" ]; then
  phase "notebooks under nbval (smoke profile, outputs in $NB_ROOT)"
  ECGPAPER_PROFILE=smoke ECGPAPER_ROOT="$NB_ROOT" python -m pytest --nbval-lax --nbval-current-env \
    --nbval-cell-timeout 1200 -p no:cacheprovider -q notebooks/
  export ECGPAPER_NOTEBOOK_RUN="$NB_ROOT"
fi
phase "test suite"
if [ -n "$MINI_PID" ]; then
  python -m pytest --durations=25 --ignore=tests/test_paper_mini.py "$@"
  phase "the paper profile in miniature: waiting for it to finish"
  if ! wait "$MINI_PID"; then
    MINI_PID=""
    tail -n 60 "$MINI_ROOT/out.log" >&2
    echo "the paper-mini notebook run failed; its log is above" >&2
    exit 1
  fi
  MINI_PID=""
  ECGPAPER_PAPER_MINI_RUN="$MINI_ROOT" python -m pytest -p no:cacheprovider tests/test_paper_mini.py
else
  python -m pytest "$@"
fi
phase "all tests passed"
