# Sourced by run_all.sh and run_tests.sh: build the React front end
# (webapp/frontend/dist, served by Django) when it is missing or older than
# its sources. Needs Node.js >= 20.19 and npm; skipped with a note without them.
build_frontend() {
  local fe="$ROOT/webapp/frontend"
  if ! command -v npm >/dev/null 2>&1; then
    echo "[frontend] npm not found: the web page will not be built (install Node.js >= 20.19)" >&2
    return 1
  fi
  if [ ! -d "$fe/node_modules" ] || [ "$fe/package-lock.json" -nt "$fe/node_modules/.package-lock.json" ]; then
    echo "[frontend] npm ci"
    (cd "$fe" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  if [ ! -f "$fe/dist/index.html" ] || [ -n "$(find "$fe/src" "$fe/index.html" "$fe/vite.config.js" -newer "$fe/dist/index.html" 2>/dev/null | head -1)" ]; then
    echo "[frontend] npm run build"
    (cd "$fe" && npm run --silent build)
  fi
}
