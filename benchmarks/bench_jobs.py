"""Benchmark: wall time of an experiment with ``--jobs 1`` vs ``--jobs N`` (issue 20; runs.engine).

    python benchmarks/bench_jobs.py [--experiment grid] [--profile smoke] [--jobs 1 2]

For each ``--jobs`` value, a fresh project root: the data is prepared first
(not timed), then ``python -m ecgpaper run <experiment> --jobs N`` is timed
from start to exit (section 4's grid: six independent runs). On a CPU the runs
share the cores, so the gain is what one run leaves idle (graph tracing, data
input, TensorFlow's start-up); on G GPUs, ``--jobs G`` pins one run per GPU.
Appends to ``results/benchmarks/jobs.csv`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="grid")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more arguments for `python -m ecgpaper run` (e.g. --allow-cpu)")
    args = parser.parse_args()
    import pandas as pd

    from ecgpaper.outputs import append_benchmark

    rows = []
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory(prefix="ecgpaper-bench-jobs-") as root:
            env = {**os.environ, "ECGPAPER_ROOT": root, "ECGPAPER_EXECUTOR": "process",
                   "TF_CPP_MIN_LOG_LEVEL": "2", "ECGPAPER_PROGRESS": "lines"}
            env.pop("ECGPAPER_JOBS", None)
            cli = [sys.executable, "-m", "ecgpaper"]
            subprocess.run([*cli, "prepare", "--profile", args.profile], env=env, cwd=REPO, check=True,
                           capture_output=True)
            t0 = time.perf_counter()
            out = subprocess.run([*cli, "run", args.experiment, "--profile", args.profile, "--no-export",
                                  "--jobs", str(jobs), *args.extra], env=env, cwd=REPO,
                                 capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if out.returncode != 0:
                sys.exit(f"--jobs {jobs} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            registry = next(Path(root, "results").rglob("runs.jsonl"))
            records = [json.loads(line) for line in registry.read_text().splitlines()]
            rows.append({"experiment": args.experiment, "profile": args.profile, "jobs": jobs,
                         "runs": len(records), "wall_seconds": round(seconds, 1),
                         "mean_test_accuracy": round(sum(r["metrics"]["accuracy"] for r in records)
                                                     / len(records), 3)})
    table = pd.DataFrame(rows)
    table["speed_up"] = (table["wall_seconds"].iloc[0] / table["wall_seconds"]).round(2)
    append_benchmark(table, "jobs")


if __name__ == "__main__":
    main()
