#!/usr/bin/env bash
# Regenerate everything: set up .venv if needed, then run the pipeline.
#   ./run_all.sh [--profile smoke|quick|paper] [--data-root PATH]
# Default: the quick profile on the Kaggle data in data/raw/kaggle if it was
# downloaded (python -m ecgpaper download), else on the SYNTHETIC twin.
set -euo pipefail
cd "$(dirname "$0")"
PROFILE="quick"
DATA_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --profile=*) PROFILE="${1#*=}"; shift ;;
    --data-root) DATA_ARGS=(--data-root "$2"); shift 2 ;;
    --data-root=*) DATA_ARGS=(--data-root "${1#*=}"); shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see ./run_all.sh --help)" >&2; exit 2 ;;
  esac
done
source scripts/bootstrap.sh
start=$(date +%s)
echo "== ecgpaper: data stage (profile $PROFILE) =="
python -m ecgpaper prepare --profile "$PROFILE" "${DATA_ARGS[@]}"
echo "== done in $(( $(date +%s) - start )) s =="
