"""The page gate (issue 22, item 9): does it tell ECG report pages from everything else?

The gate is calibrated exactly as ``python -m ecgpaper export`` calibrates it
(``ecgpaper.data.pagegate.gate_for_split``: the twin's ``grouped`` training
pages, threshold from its validation pages), then scored on held-out images:

- ECG pages: the twin's test pages, and freshly drawn pages (seeds the twin
  never used) at the real archive's page size and the smoke size, as JPEG,
  greyscale, a low-quality JPEG, PNG, turned by 90 and by 3 degrees, scaled
  down to 800 px wide;
- real-signal ECG pages: pages whose traces are a real recording, the single-lead
  ECG that pyhrv ships (``benchmarks/data/``: 22 s at 1000 Hz, BITalino), each of
  the twelve leads a different 10 s window of it at a lead's own gain and sign,
  drawn by the twin's page renderer (the twin's physiology is the part replaced:
  real P-QRS-T shapes, noise and baseline wander instead of the dipole model);
- not ECG pages: blank and near-blank pages, uniform and Gaussian noise, text
  documents (letters), the photos and the MRI slice matplotlib ships (and
  skimage.data's pictures if scikit-image is installed), terrain maps, a line
  chart, graph paper without traces and a table.

Writes ``results/benchmarks/ood_gate.csv`` (one row per image: kind, category,
distance, accepted) and ``ood_gate_summary.csv`` (AUROC, ECG pages accepted,
non-ECG images rejected, per category too), and prints the summary.

    python benchmarks/bench_ood.py [--profile smoke] [--pages 40] [--real-pages 40]
"""
from __future__ import annotations

import argparse
import gzip
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ecgpaper import paths  # noqa: E402
from ecgpaper.config import CLASS_CODES, REFERENCE_PAGE_SIZE  # noqa: E402
from ecgpaper.data.pagegate import PageGate, gate_for_split, page_pixels  # noqa: E402
from ecgpaper.data.splits import read_manifest  # noqa: E402
from ecgpaper.data.twin_render import render_page  # noqa: E402


def encoded(img: Image.Image, fmt: str = "JPEG", **kw) -> Image.Image:
    """``img`` as an upload: encoded, then opened lazily (as the service opens it)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def ecg_variants(n: int, seed: int):
    """Freshly drawn pages (seeds from ``seed`` on), each in one of the upload variants."""
    for i in range(n):
        size = REFERENCE_PAGE_SIZE if i % 2 == 0 else (1106, 786)
        page = render_page(CLASS_CODES[i % 4], np.random.default_rng(seed + i), size,
                           patient_id=f"B{i:04d}", date="2024-03-01 12:00")
        variants = {
            "jpeg": lambda p: encoded(p, quality=90),
            "greyscale": lambda p: encoded(p.convert("L"), quality=90),
            "jpeg quality 40": lambda p: encoded(p, quality=40),
            "png": lambda p: encoded(p, "PNG"),
            "turned 90 degrees": lambda p: encoded(p.rotate(90, expand=True), quality=90),
            "turned 3 degrees": lambda p: encoded(p.rotate(3, expand=True, fillcolor="white"), quality=90),
            "800 px wide": lambda p: encoded(p.resize((800, round(800 * p.height / p.width))), quality=90),
        }
        name = list(variants)[i % len(variants)]
        yield f"drawn page, {name}", f"drawn-{i}", variants[name](page)


REAL_ECG = REPO / "benchmarks" / "data" / "pyhrv_sample_ecg.npz"


def real_recording() -> tuple[np.ndarray, float]:
    """pyhrv's sample ECG (benchmarks/data/README.md) in mV, resampled to the page's
    ``SAMPLE_RATE_HZ``, and its heart rate (bpm) from its R peaks. BITalino's ECG
    sensor: mV = (ADC / 2**bits - 1/2) * 3.3 V / gain 1100 * 1000."""
    from scipy.signal import find_peaks, resample_poly

    from ecgpaper.data.twin_physiology import SAMPLE_RATE_HZ

    data = np.load(REAL_ECG)
    rate, bits = int(data["sampling_rate_hz"]), int(data["resolution_bits"])
    mv = (data["adc"] / 2.0**bits - 0.5) * 3.3 / 1100 * 1000
    mv = resample_poly(mv - np.median(mv), int(SAMPLE_RATE_HZ), rate)
    peaks, _ = find_peaks(mv, distance=int(0.3 * SAMPLE_RATE_HZ), prominence=0.5)
    return mv, 60 * SAMPLE_RATE_HZ / np.diff(peaks).mean()


def real_signal_pages(n: int, seed: int):
    """``n`` pages drawn from :func:`real_recording`: for each lead a random 10 s
    window, gain 0.4-1.6 and sign (aVR negative, as it is in sinus rhythm), as JPEG."""
    from ecgpaper.data.twin_physiology import RECORD_SECONDS, SAMPLE_RATE_HZ
    from ecgpaper.data.twin_render import LEAD_NAMES

    mv, rate = real_recording()
    length = int(RECORD_SECONDS * SAMPLE_RATE_HZ)
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        leads = {}
        for lead in LEAD_NAMES:
            start = int(rng.integers(0, len(mv) - length))
            sign = -1.0 if lead == "aVR" else float(rng.choice((-1.0, 1.0), p=(0.2, 0.8)))
            window = mv[start:start + length]
            leads[lead] = sign * rng.uniform(0.4, 1.6) * (window - np.median(window))
        size = REFERENCE_PAGE_SIZE if i % 2 == 0 else (1106, 786)
        page = render_page(None, rng, size, patient_id=f"R{i:04d}", date="2024-04-01 09:00",
                           leads=leads, heart_rate=round(rate))
        yield "real-signal page", f"real-{i}", encoded(page, quality=90)


def text_page(rng: np.random.Generator, size=(1240, 1754)) -> Image.Image:
    """A letter: lines of text on white paper (A4 at 150 dpi)."""
    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    font_px = int(rng.integers(14, 30))
    font = ImageFont.load_default(size=font_px)
    words = "patient referral dear colleague thank you for seeing the results of blood tests attached".split()
    y = int(size[1] * 0.08)
    while y < size[1] * 0.9:
        line = " ".join(rng.choice(words, int(rng.integers(4, 14))))
        draw.text((int(size[0] * 0.1), y), line.capitalize(), font=font, fill=(20, 20, 30))
        y += int(font_px * rng.uniform(1.3, 1.8)) + (font_px * 2 if rng.random() < 0.1 else 0)
    return page


def sample_data() -> dict[str, Image.Image]:
    """The pictures matplotlib ships (photos, an MRI slice, terrain), and skimage.data's."""
    import matplotlib
    from matplotlib import cm

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    out = {name: Image.open(folder / name) for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png",
                                                         "logo2.png")}
    mri = np.frombuffer(gzip.open(folder / "s1045.ima.gz").read(), np.uint16).reshape(256, 256)
    out["MRI slice"] = Image.fromarray((mri / mri.max() * 255).astype(np.uint8))
    for name in ("jacksboro_fault_dem.npz", "topobathy.npz"):
        with np.load(folder / name) as z:
            elev = np.asarray(z[z.files[0]], float)
        elev = (elev - elev.min()) / (np.ptp(elev) or 1)
        out[name] = Image.fromarray((cm.terrain(elev)[..., :3] * 255).astype(np.uint8))
    try:
        import skimage.data as sd
    except ImportError:
        return out
    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "page", "text", "moon", "horse"):
        try:
            arr = getattr(sd, name)()
        except Exception:  # noqa: BLE001 (a picture that would need a download)
            continue
        out[f"skimage {name}"] = Image.fromarray(np.asarray(arr * 255 if arr.dtype == bool else arr, np.uint8))
    return out


def hard_negatives(rng: np.random.Generator):
    """Pictures with some of an ECG's parts: graph paper (no traces), a table, a line chart."""
    grid = Image.new("RGB", (1100, 780), "white")
    draw = ImageDraw.Draw(grid)
    for x in range(0, 1100, 20):
        draw.line((x, 0, x, 780), fill=(235, 150, 165), width=2 if x % 100 == 0 else 1)
    for y in range(0, 780, 20):
        draw.line((0, y, 1100, y), fill=(235, 150, 165), width=2 if y % 100 == 0 else 1)
    yield "graph paper", "graph-paper", encoded(grid)
    table = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(table)
    font = ImageFont.load_default(size=18)
    for r in range(40):
        y = 150 + r * 36
        draw.line((100, y, 1140, y), fill=(60, 60, 60), width=1)
        for c in range(5):
            draw.text((110 + c * 208, y + 8), f"{rng.normal(100, 30):.1f}", font=font, fill=(0, 0, 0))
    for c in range(6):
        draw.line((100 + c * 208, 150, 100 + c * 208, 150 + 39 * 36), fill=(60, 60, 60), width=1)
    yield "table", "table", encoded(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 7.8), dpi=100)
    t = np.linspace(0, 10, 2000)
    ax.plot(t, np.sin(2 * np.pi * 1.2 * t) + 0.1 * rng.normal(size=t.size), color="k", lw=1)
    ax.grid(True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    yield "line chart", "line-chart", Image.open(io.BytesIO(buf.getvalue()))


def non_ecg(rng: np.random.Generator, n: int):
    """name, id, image of the not-ECG set."""
    for i in range(n // 4):
        w, h = (int(rng.integers(300, 2400)), int(rng.integers(300, 2400)))
        yield "blank page", f"blank-{i}", encoded(Image.new("RGB", (w, h), tuple(int(v) for v in
                                                  rng.integers(235, 256, 3))))
        near = np.clip(rng.normal(245, 4, (h, w)), 0, 255)
        for _ in range(int(rng.integers(1, 6))):  # a few marks, a fold, a staple
            y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 200))
            near[y:y + 3, x:x + int(rng.integers(20, 200))] = rng.integers(0, 120)
        yield "near-blank page", f"near-blank-{i}", encoded(Image.fromarray(near.astype(np.uint8)))
        yield "uniform noise", f"noise-{i}", encoded(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "PNG")
        gauss = np.clip(rng.normal(128, 50, (h, w)), 0, 255).astype(np.uint8)
        yield "gaussian noise", f"gauss-{i}", encoded(Image.fromarray(gauss), "PNG")
        yield "text document", f"letter-{i}", encoded(text_page(rng), quality=85)
    for name, img in sample_data().items():
        img = img.convert("RGB")
        yield "photo or other picture", name, encoded(img)
        crop = img.crop((0, 0, max(2, img.width * 2 // 3), max(2, img.height * 2 // 3)))
        yield "photo or other picture", f"{name}, cropped", encoded(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    yield from hard_negatives(rng)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke", help="the twin profile whose split calibrates the gate")
    ap.add_argument("--pages", type=int, default=40, help="freshly drawn ECG pages (and ~ non-ECG images)")
    ap.add_argument("--real-pages", type=int, default=40, help="pages drawn from the real recording")
    ap.add_argument("--out", default=None, help="default results/benchmarks/ood_gate.csv")
    args = ap.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from ecgpaper.data.prepare import prepare_data

    prepared = prepare_data(profile=args.profile, build_image_cache=False, progress=False, log=lambda *_: None)
    gate = PageGate(gate_for_split(prepared.root, prepared.dataset, "grouped", 0))
    man = read_manifest(prepared.dataset, "grouped", 0)
    test = man.loc[man["subset"] == "test", "path"].tolist()

    def images():
        for rel in test:
            yield "ecg", "twin test page", rel, Image.open(prepared.root / rel)
        for category, name, img in ecg_variants(args.pages, seed=900_000):
            yield "ecg", category, name, img
        for category, name, img in real_signal_pages(args.real_pages, seed=700_000):
            yield "ecg", category, name, img
        for category, name, img in non_ecg(np.random.default_rng(1), args.pages):
            yield "not ecg", category, name, img

    rows = []
    for kind, category, name, img in images():
        accepted, distance = gate.check(page_pixels(img))
        rows.append({"kind": kind, "category": category, "image": name, "distance": round(distance, 4),
                     "accepted": accepted})
    table = pd.DataFrame(rows)
    is_ecg = table["kind"] == "ecg"
    auroc = roc_auc_score(is_ecg, -table["distance"])
    summary = [{"set": "all", "n": len(table), "auroc": round(auroc, 4),
                "ecg_accepted": round(table.loc[is_ecg, "accepted"].mean(), 4),
                "non_ecg_rejected": round(1 - table.loc[~is_ecg, "accepted"].mean(), 4),
                "threshold": round(gate.threshold, 4), "calibration": gate.params["source"]}]
    for (kind, category), part in table.groupby(["kind", "category"], sort=False):
        row = {"set": f"{kind}: {category}", "n": len(part)}
        if kind == "ecg":  # these pages against every non-ECG image
            against = pd.concat([part, table[~is_ecg]])
            row["auroc"] = round(roc_auc_score(against["kind"] == "ecg", -against["distance"]), 4)
            row["ecg_accepted"] = round(part["accepted"].mean(), 4)
        else:
            row["non_ecg_rejected"] = round(1 - part["accepted"].mean(), 4)
        summary.append(row)
    out = Path(args.out) if args.out else paths.BENCHMARKS / "ood_gate.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, lineterminator="\n")
    summary = pd.DataFrame(summary)
    summary.to_csv(out.with_name(out.stem + "_summary.csv"), index=False, lineterminator="\n")
    print(summary.drop(columns=["calibration"]).to_string(index=False))
    print(f"calibrated on: {gate.params['source']} ({gate.params['n_train']} + {gate.params['n_val']} pages)")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
