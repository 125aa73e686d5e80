# Sourced by run_all.sh and run_tests.sh: make sure .venv exists and holds an
# up-to-date install of ecgpaper, then activate it.
# Reinstalls only when pyproject.toml changed (stamp = its sha256 + extras).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ECGPAPER_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  TF_EXTRA="gpu"
else
  TF_EXTRA="cpu"
fi
EXTRAS="${ECGPAPER_EXTRAS:-$TF_EXTRA,web,dev}"
STAMP="$VENV/.ecgpaper-install-stamp"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $EXTRAS"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[bootstrap] installing ecgpaper[$EXTRAS] into $VENV (first time: a few minutes)"
  LOG="$VENV/install.log"
  "$VENV/bin/python" -m pip install --upgrade pip >"$LOG" 2>&1 || true
  if ! "$VENV/bin/python" -m pip install -e "$ROOT[$EXTRAS]" >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    echo "[bootstrap] installation failed; full log: $LOG" >&2
    exit 1
  fi
  # the kernel the notebooks ask for (ecgpaper/lab.py registers it the same way)
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name ecgpaper --display-name "Python (ecgpaper)" >/dev/null
  echo "$WANT" > "$STAMP"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export MPLBACKEND="${MPLBACKEND:-agg}"
