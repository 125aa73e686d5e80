"""Benchmark: the parent's memory with a process per run (issue 20; runs.engine).

    python benchmarks/bench_memory.py [--profile smoke] [--counts 1 3 6]

For each executor (``inline``: every run in the calling process, as before the
runs engine; ``process``: each run in its own ``python -m ecgpaper.runs.worker``),
a fresh Python process prepares the profile's data and trains the first 1, 3
and 6 runs of the grid (section 4, Table 1; finished runs are reused, so each
step adds runs), printing its own resident memory (VmRSS) and peak (VmHWM)
after each step. A notebook kernel or CLI is that parent: what it keeps grows
with every inline run and stays flat with a process per run.
Appends to ``results/benchmarks/memory.csv`` and prints a Markdown table.
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


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(profile: str, counts: list[int]) -> None:
    """In a fresh process: train the grid's first ``counts`` runs, print the memory after each."""
    from ecgpaper.config import get_profile
    from ecgpaper.data.prepare import prepare_data
    from ecgpaper.runs.experiments import experiment_configs, load_run_data, run_configs

    quiet = lambda *_: None  # noqa: E731
    prof = get_profile(profile)
    prepared = prepare_data(None, profile=profile, image_size=prof.image_size, progress=False, log=quiet)
    configs = experiment_configs("grid", profile=profile, dataset=prepared.dataset, log=quiet)
    data = load_run_data(prepared, "paper", 0, configs[0].limit_train_per_class)
    print(json.dumps({"runs": 0, "rss_mb": _status_mb("VmRSS"), "peak_mb": _status_mb("VmHWM")}), flush=True)
    for n in counts:
        t0 = time.perf_counter()
        run_configs(configs[:n], data, log=quiet)
        print(json.dumps({"runs": n, "rss_mb": _status_mb("VmRSS"), "peak_mb": _status_mb("VmHWM"),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--child", choices=["inline", "process"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.profile, args.counts)
        return
    import pandas as pd

    from ecgpaper.outputs import append_benchmark

    rows = []
    for executor in ("inline", "process"):
        with tempfile.TemporaryDirectory(prefix="ecgpaper-bench-memory-") as root:
            env = {**os.environ, "ECGPAPER_ROOT": root, "ECGPAPER_EXECUTOR": executor,
                   "ECGPAPER_JOBS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "ECGPAPER_PROGRESS": "off"}
            out = subprocess.run([sys.executable, __file__, "--child", executor, "--profile", args.profile,
                                  "--counts", *map(str, args.counts)], env=env, cwd=REPO,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{executor} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    rows.append({"executor": executor, **json.loads(line)})
    table = pd.DataFrame(rows)
    table.insert(0, "profile", args.profile)
    append_benchmark(table, "memory")


if __name__ == "__main__":
    main()
