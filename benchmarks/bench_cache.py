"""Benchmark: naive per-image decode+resize vs the preprocessing cache.

    python benchmarks/bench_cache.py [--n 200] [--size 224] [--workers 2]

Synthesises full-size (2213 x 1572) twin pages in a temporary folder, then
times (1) the obvious ``Image.open().convert().resize()`` loop, one process,
and (2) :func:`ecgpaper.data.preprocess.build_cache` (JPEG draft decoding, all
cores). Targets (issue 2): cache >= 5x naive and >= 100 images/s on 2 cores.
Writes ``results/benchmarks/cache.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import PIL

from ecgpaper import paths
from ecgpaper.data.discovery import discover
from ecgpaper.data.inventory import build_inventory
from ecgpaper.data.preprocess import PreprocessSettings, build_cache, load_image_naive
from ecgpaper.data.synthetic import synthesize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="distinct full-size pages (default %(default)s)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(paths.BENCHMARKS / "cache.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "twin"
        per_class = max(1, args.n // 4)
        synthesize(root, distinct_per_class=per_class, page_size=(2213, 1572), duplicate_fraction=0.0,
                   near_duplicate_fraction=0.0, cross_split_fraction=0.0, plant_strays=False,
                   n_corrupt=0, workers=args.workers, progress=False)
        inv = build_inventory(discover(root), workers=args.workers, progress=False)
        files = [root / p for p in inv["path"]]
        n = len(files)

        t0 = time.perf_counter()
        for f in files:
            load_image_naive(f, args.size)
        naive_s = time.perf_counter() - t0

        paths.CACHE = Path(tmp) / "cache"
        t0 = time.perf_counter()
        build_cache(inv, root, "bench", PreprocessSettings(args.size), workers=args.workers,
                    progress=False, force=True)
        cache_s = time.perf_counter() - t0

    result = {
        "benchmark": "preprocessing cache vs naive decode+resize (synthetic full-size pages)",
        "n_images": n, "page_size": [2213, 1572], "image_size": args.size,
        "naive_images_per_s": round(n / naive_s, 1),
        "cache_images_per_s": round(n / cache_s, 1),
        "speedup": round(naive_s / cache_s, 2),
        "workers": args.workers, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "pillow": PIL.__version__,
        "machine": platform.machine(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "targets": {"speedup_min": 5, "cache_images_per_s_min": 100},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
