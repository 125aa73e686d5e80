"""Speed of the synthetic twin: full-size distinct pages per second.

Each page counts everything ``ecgpaper.data.synthetic.synthesize`` does for it:
render, JPEG encode, sha256 and write, in ``--workers`` processes (pool start
included). No copies are planted, so every file is a freshly drawn page.

    python benchmarks/bench_synth.py [--n 60] [--workers N] [--out results/benchmarks/synth.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ecgpaper.config import REFERENCE_PAGE_SIZE  # noqa: E402
from ecgpaper.data.synthetic import synthesize  # noqa: E402


def measure(n: int, workers: int) -> dict:
    per_class = math.ceil(n / 4)
    load_before = os.getloadavg()[0]  # other jobs on the machine slow the run down
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as root:
        start = time.perf_counter()
        marker = synthesize(
            root, distinct_per_class=per_class, page_size=REFERENCE_PAGE_SIZE, seed=0,
            duplicate_fraction=0.0, near_duplicate_fraction=0.0, cross_split_fraction=0.0,
            plant_strays=False, n_corrupt=0, workers=workers, progress=False,
        )
        seconds = time.perf_counter() - start
        written = sum(p.stat().st_size for p in Path(root).rglob("*.jpg"))
    n_pages = sum(sum(counts.values()) for counts in marker["counts"].values())
    return {
        "images_per_second": round(n_pages / seconds, 2),
        "n": n_pages,
        "seconds": round(seconds, 3),
        "mean_file_kib": round(written / n_pages / 1024, 1),
        "page_size": list(REFERENCE_PAGE_SIZE),
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "load_average_1min_before": round(load_before, 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="pages to draw (rounded up to a multiple of 4)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "synth.json")
    args = parser.parse_args(argv)
    result = measure(args.n, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
