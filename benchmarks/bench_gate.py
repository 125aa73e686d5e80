"""What the page gate (issue 22, item 9) adds to every upload: the time of
``Classifier.check_page`` (decode the upload at the gate's 512 px, its six
features, the Mahalanobis distance), which runs before the model's own decoding
and forward pass, on synthetic twin pages as JPEG (quality 90) at the real
archive's page size (2213 x 1572, as ``bench_serve.py`` uploads) and the smoke
size (1106 x 786). The gate is ``twin_gate()``'s, as the serving benchmark's
export has; its cost does not depend on the calibration. No model is loaded.

    python benchmarks/bench_gate.py [--pages 8] [--repeats 5]

Writes ``results/benchmarks/gate_latency.json`` and prints it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def twin_jpegs(size, n: int) -> list[bytes]:
    """``n`` twin pages of ``size`` (seeds the gate's calibration never drew), as JPEG uploads."""
    from ecgpaper.config import CLASS_CODES
    from ecgpaper.data.synthetic import render_page

    out = []
    for i in range(n):
        page = render_page(CLASS_CODES[i % 4], np.random.default_rng(50_000 + i), size,
                           patient_id=f"L{i:04d}", date="2024-01-01 10:00")
        buf = io.BytesIO()
        page.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main() -> None:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing
    from ecgpaper import paths
    from ecgpaper.config import REFERENCE_PAGE_SIZE
    from ecgpaper.data.pagegate import PageGate, twin_gate
    from ecgpaper.serve.inference import Classifier

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=8, help="twin pages per size")
    ap.add_argument("--repeats", type=int, default=5, help="timed checks per page (after one warm-up)")
    ap.add_argument("--out", default=str(paths.BENCHMARKS / "gate_latency.json"))
    args = ap.parse_args()
    # the served method itself, on a stand-in for the Classifier that has only its gate
    served = types.SimpleNamespace(gate=PageGate(twin_gate()))
    sizes = {}
    for size in (REFERENCE_PAGE_SIZE, (1106, 786)):
        ms, accepted = [], 0
        for data in twin_jpegs(size, args.pages):
            Classifier.check_page(served, data)  # warm-up; raises InvalidImage if refused
            accepted += 1
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                Classifier.check_page(served, data)
                ms.append((time.perf_counter() - t0) * 1e3)
        a = np.asarray(ms)
        sizes[f"{size[0]}x{size[1]}"] = {
            "pages": args.pages, "accepted": accepted, "checks": int(a.size),
            "p50_ms": round(float(np.median(a)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
            "mean_ms": round(float(a.mean()), 1)}
    result = {"benchmark": "page gate: Classifier.check_page per JPEG upload (no model)",
              "sizes": sizes, "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "machine": platform.machine(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
    text = json.dumps(result, indent=2) + "\n"
    paths.atomic_write_text(Path(args.out), text)
    print(text, end="")


if __name__ == "__main__":
    main()
