#!/usr/bin/env bash
# The GPU checks of issue 19, in one prepared script (device time is short):
#   1. bench_training.py for VGG16 and ResNet50 at 224 px, float32 vs mixed
#      precision, with and without XLA (images/s, epoch seconds, peak GPU memory,
#      and the compute dtype the model really used);
#   2. the runs engine (issue 20): the paper-mini grid with --jobs 1 vs one run per GPU
#      (bench_jobs.py; random weights, as no mirror is needed for timing);
#   3. the paper profile in miniature (every notebook on paper-mini, test weights
#      from a loopback mirror), with the GPU check on (no --allow-cpu).
# Results go to $OUT (default results/benchmarks/gpu) as JSON and logs.
#   benchmarks/gpu_checks.sh                  # on the GPU machine
#   SIZES=32 STEPS=1 MODELS=VGG16 ALLOW_CPU=1 [SKIP_MINI=1] benchmarks/gpu_checks.sh   # rehearsal on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/benchmarks/gpu}"
SIZES="${SIZES:-224}"
STEPS="${STEPS:-10}"
MODELS="${MODELS:-VGG16 ResNet50}"
mkdir -p "$OUT"
source scripts/bootstrap.sh
nvidia-smi -L > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"
python -c "import tensorflow as tf; print(tf.__version__, tf.config.list_physical_devices('GPU'))" \
  | tee "$OUT/tensorflow.txt"
for mode in "" "--mixed-precision" "--xla" "--mixed-precision --xla"; do
  tag="fp32"; [[ "$mode" == *mixed* ]] && tag="mixed"; [[ "$mode" == *xla* ]] && tag="$tag-xla"
  # shellcheck disable=SC2086
  python benchmarks/bench_training.py --models $MODELS --sizes $SIZES --steps "$STEPS" \
    --batch-size 32 $mode --out "$OUT/training-$tag.json" 2>&1 | tee "$OUT/training-$tag.log"
done
if [ "${ALLOW_CPU:-0}" = "1" ]; then export ECGPAPER_ALLOW_CPU=1; fi
NGPU="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
if [ "${NGPU:-0}" -gt 1 ]; then
  python benchmarks/bench_jobs.py --profile paper-mini --jobs 1 "$NGPU" --extra --weights none 2>&1 \
    | tee "$OUT/jobs.log"
fi
[ "${SKIP_MINI:-0}" = "1" ] && exit 0
MINI="$(mktemp -d -t ecgpaper-paper-mini-XXXXXX)"
start=$(date +%s)
python tests/support/imagenet_mirror.py "$MINI" > "$OUT/paper-mini.log" 2>&1 || {
  tail -n 40 "$OUT/paper-mini.log"; echo "paper-mini failed"; exit 1; }
echo "paper-mini: $(( $(date +%s) - start )) s" | tee "$OUT/paper-mini-seconds.txt"
cp "$MINI"/project/results/synthetic-paper-mini/paper-mini/REPORT.md "$OUT/paper-mini-REPORT.md"
cp "$MINI"/project/results/synthetic-paper-mini/paper-mini/notebooks/timings.json "$OUT/paper-mini-timings.json"
python - "$MINI" "$OUT" <<'EOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1]) / "project/results/synthetic-paper-mini/paper-mini/runs"
rows = []
for folder in sorted(runs.iterdir()):
    m = json.loads((folder / "metrics.json").read_text())
    rows.append({"run": folder.name, "compute_dtype": m.get("compute_dtype"),
                 "gpu_peak_memory_mb": m.get("gpu_peak_memory_mb"),
                 "epoch_seconds_mean": m.get("epoch_seconds_mean"),
                 "first_epoch_seconds": m.get("first_epoch_seconds"), "collapsed": m["collapse"]["collapsed"]})
Path(sys.argv[2], "paper-mini-runs.json").write_text(json.dumps(rows, indent=2))
print(json.dumps(rows[:4], indent=1))
EOF
rm -rf "$MINI"
