#!/usr/bin/env bash
# Regenerate every table and figure: set up .venv if needed, then execute the
# notebooks in order with papermill.
#   ./run_all.sh [--profile smoke|quick|paper|paper-mini] [--data-root PATH]
#   ./run_all.sh --download also fetch the Kaggle data and the ImageNet weights first
#                           (the real reproduction: ./run_all.sh --profile paper --download)
#   ./run_all.sh --allow-cpu run a GPU profile (paper, paper-mini) on the CPU anyway
#   ./run_all.sh --jobs N   train N runs at once, each in its own process (default: one per GPU, else 1)
#   ./run_all.sh --ray ADDRESS  send every run to the Ray cluster at ADDRESS (README: More than one GPU or machine)
#   ./run_all.sh --lab      set up .venv, then open JupyterLab on notebooks/ instead
# Default: the quick profile on the Kaggle data in data/raw/kaggle if it was
# downloaded (python -m ecgpaper download), else on the SYNTHETIC twin.
set -euo pipefail
cd "$(dirname "$0")"
ARGS=()
PROFILE=quick
LAB=0
DOWNLOAD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="$2"; ARGS+=("$1" "$2"); shift 2 ;;
    --profile=*) PROFILE="${1#--profile=}"; ARGS+=("$1"); shift ;;
    --data-root) ARGS+=("$1" "$2"); shift 2 ;;
    --data-root=*) ARGS+=("$1"); shift ;;
    --lab) LAB=1; shift ;;
    --download) DOWNLOAD=1; shift ;;
    --allow-cpu) ARGS+=("$1"); shift ;;
    --jobs|--ray) ARGS+=("$1" "$2"); shift 2 ;;
    --jobs=*|--ray=*) ARGS+=("$1"); shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see ./run_all.sh --help)" >&2; exit 2 ;;
  esac
done
source scripts/bootstrap.sh
if [ "$LAB" = 1 ]; then
  exec python -m ecgpaper lab
fi
source scripts/build_frontend.sh
start=$(date +%s)
if [ "$DOWNLOAD" = 1 ]; then
  python -m ecgpaper download              # Kaggle: needs ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY
  # every backbone a notebook builds (02-04: VGG16, ResNet50; 06: MobileNetV2, EfficientNetB0),
  # MobileNetV2's file for the profile's image size
  python -m ecgpaper download --weights --profile "$PROFILE"
fi
python -m ecgpaper notebooks "${ARGS[@]}"
build_frontend || true
echo "== run_all.sh finished in $(( $(date +%s) - start )) s"
echo "web page: .venv/bin/python -m ecgpaper serve   (then open http://127.0.0.1:8000; users: see webapp/README.md)"
