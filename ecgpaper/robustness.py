"""Noise robustness (beyond the paper, section 5.2: "robustness to real-world
distortions" is listed as untested).

Test-time corruptions that mimic acquisition problems of a photographed or
scanned ECG page, each at graded severities 1-5 (severity 0: clean), after
Hendrycks & Dietterich's ImageNet-C protocol: accuracy vs severity per model.

Where the corruption happens: on the PAGE, before the package's own
preprocessing (crop, resize), because that is where acquisition damages an
ECG: a rotated page is then cropped like any upload, and the model sees what
the web service would. Pages are decoded once at a working width of
``WORK_SCALE`` x the model's input size (Pillow's DCT-domain draft keeps that
cheap), corrupted, then passed through ``preprocess.prepare_image`` exactly as
the training cache was built. Sizes of blur, wander and rotation are given in
millimetres of paper (the page is ``PAGE_WIDTH_MM`` wide), so a severity means
the same thing at every resolution.

Library choice: Keras 3 (already a dependency, maintained with the models)
does the transforms it has at a fixed, graded strength: ``GaussianNoise`` and
``RandomRotation`` layers (with a fixed factor), ``keras.ops.image.gaussian_blur``
(arbitrary sigma; the ``RandomGaussianBlur`` layer caps sigma at 1 px) and
``keras.ops.image.map_coordinates`` for the wander warp. Pillow (libjpeg, the
codec a phone or scanner uses) does JPEG. Occlusion is a nested rectangle in
numpy: ``RandomErasing`` redraws the position at every call, so severities
would not be nested. albumentations was not added: its MIT line ended at
2.0.8 (development moved to the AGPL-licensed AlbumentationsX) and it would
pull OpenCV for six transforms.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .beyond import acc_f1, majority_rate
from .config import HEADER_CROP_FRACTIONS

PAGE_WIDTH_MM = 280.0  # width of a 12-lead report page (synthetic.PAGE_WIDTH_MM; 25 mm/s x 10 s + margins)
WORK_SCALE = 4  # pages are corrupted at 4 x the model's input width
WANDER_PERIOD_MM = 80.0  # ~0.3 Hz at 25 mm/s, the typical respiratory baseline wander

#: name -> (what the level means, levels for severity 1..5)
CORRUPTIONS: dict[str, tuple[str, tuple[float, ...]]] = {
    "gaussian_noise": ("pixel noise std (0-255)", (8, 16, 32, 48, 64)),
    "blur": ("Gaussian blur sigma (mm of paper)", (0.25, 0.5, 1.0, 1.5, 2.0)),
    "jpeg": ("JPEG quality", (50, 30, 20, 10, 5)),
    "rotation": ("page rotation (degrees)", (1, 2, 4, 6, 8)),
    "baseline_wander": ("wander amplitude (mm; 10 mm = 1 mV)", (1, 2, 4, 6, 8)),
    "occlusion": ("share of the ECG grid covered", (0.02, 0.05, 0.10, 0.20, 0.30)),
}
SEVERITIES = (1, 2, 3, 4, 5)
OCCLUSION_GREY = 128.0  # a neutral patch: a finger, a sticker, a fold's shadow


def level(name: str, severity: int) -> float:
    """The corruption's parameter at ``severity`` (0: none)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if severity == 0:
        return 0.0
    levels = CORRUPTIONS[name][1]
    if not 1 <= severity <= len(levels):
        raise ValueError(f"severity must lie in 0..{len(levels)}")
    return float(levels[severity - 1])


# --------------------------------------------------------------------------
# the corruptions: float32 pages (n, h, w, 3) in 0..255 -> same
# --------------------------------------------------------------------------

def _px_per_mm(pages: np.ndarray) -> float:
    return pages.shape[2] / PAGE_WIDTH_MM


def _gaussian_noise(pages, value, seed):
    import keras

    # the layer takes stddev in [0, 1]: work on [0, 1] pixels
    noisy = keras.layers.GaussianNoise(value / 255.0, seed=seed)(pages / 255.0, training=True)
    return np.asarray(noisy) * 255.0


def _blur(pages, value, seed):
    import keras

    sigma = value * _px_per_mm(pages)
    r = math.ceil(3 * sigma)
    # the op pads with zeros (a dark frame): pad with the page's own edge, blur, cut back
    padded = np.pad(pages, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    blurred = keras.ops.image.gaussian_blur(padded, kernel_size=(2 * r + 1, 2 * r + 1), sigma=(sigma, sigma))
    return np.asarray(blurred)[:, r:r + pages.shape[1], r:r + pages.shape[2]]


def _jpeg(pages, value, seed):
    out = np.empty_like(pages)
    for i, page in enumerate(pages):
        buf = io.BytesIO()
        Image.fromarray(np.clip(page + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(value))
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32)
    return out


def _rotation(pages, value, seed):
    import keras

    layer = keras.layers.RandomRotation(factor=(value / 360.0, value / 360.0), fill_mode="constant",
                                        fill_value=255.0, seed=seed)
    return np.asarray(layer(pages, training=True))


def _baseline_wander(pages, value, seed):
    """Each column shifted vertically by A sin(2 pi x / period + phase): the
    slow drift baseline wander gives the traces (the grid moves with them, a
    simplification)."""
    import keras

    n, h, w, c = pages.shape
    rng = np.random.default_rng(seed)
    amp = value * _px_per_mm(pages)
    period = WANDER_PERIOD_MM * _px_per_mm(pages)
    yy, xx, cc = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                             np.arange(c, dtype=np.float32), indexing="ij")
    out = np.empty_like(pages)
    for i in range(n):
        shift = amp * np.sin(2 * np.pi * xx / period + rng.uniform(0, 2 * np.pi))
        coords = np.stack([yy - shift, xx, cc])
        out[i] = np.asarray(keras.ops.image.map_coordinates(pages[i], coords, order=1,
                                                            fill_mode="constant", fill_value=255.0))
    return out


def _occlusion(pages, value, seed):
    """A grey rectangle covering ``value`` of the ECG grid's area, with the
    grid's aspect ratio, centred at a seeded random point of the grid: the
    same centre at every severity, so a stronger occlusion contains a weaker."""
    n, h, w, _ = pages.shape
    fl, ft, fr, fb = HEADER_CROP_FRACTIONS
    gw, gh = (fr - fl) * w, (fb - ft) * h
    rw, rh = gw * math.sqrt(value), gh * math.sqrt(value)
    rng = np.random.default_rng(seed)
    out = pages.copy()
    for i in range(n):
        cx = fl * w + rng.uniform(rw / 2, gw - rw / 2)
        cy = ft * h + rng.uniform(rh / 2, gh - rh / 2)
        x0, x1 = int(round(cx - rw / 2)), int(round(cx + rw / 2))
        y0, y1 = int(round(cy - rh / 2)), int(round(cy + rh / 2))
        out[i, max(y0, 0):y1, max(x0, 0):x1] = OCCLUSION_GREY
    return out


_FUNCTIONS = {"gaussian_noise": _gaussian_noise, "blur": _blur, "jpeg": _jpeg, "rotation": _rotation,
              "baseline_wander": _baseline_wander, "occlusion": _occlusion}


def corrupt(pages: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt float32 pages (n, h, w, 3) in 0..255 at ``severity`` (0: a copy)."""
    value = level(name, severity)
    pages = np.asarray(pages, np.float32)
    if severity == 0:
        return pages.copy()
    return np.clip(_FUNCTIONS[name](pages, value, seed), 0, 255).astype(np.float32)


# --------------------------------------------------------------------------
# pages in, model inputs out
# --------------------------------------------------------------------------

def load_pages(root, rel_paths, width: int) -> np.ndarray:
    """Decode pages at ``width`` px (height from the first page's aspect ratio),
    float32 (n, h, w, 3) in 0..255."""
    pages, size = [], None
    for rel in rel_paths:
        with Image.open(Path(root) / rel) as img:
            if size is None:
                size = (width, max(1, round(width * img.height / img.width)))
            if img.format == "JPEG":
                img.draft("RGB", size)
            pages.append(np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32))
    return np.stack(pages)


def to_model_inputs(pages: np.ndarray, settings) -> np.ndarray:
    """Corrupted float pages -> uint8 model inputs via the training preprocessing."""
    from .preprocess import prepare_image

    return np.stack([prepare_image(Image.fromarray(np.clip(p + 0.5, 0, 255).astype(np.uint8)), settings)
                     for p in pages])


# --------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------

def _predictor(run: dict):
    """uint8 batch -> class probabilities, a compiled forward of the saved model."""
    import keras
    import tensorflow as tf

    from .pipeline import scaling_fn

    model = keras.models.load_model(run["folder"] / "model.keras", compile=False, safe_mode=True)
    scale = scaling_fn(run["config"]["scaling"], run["config"]["model"])

    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(scale(x), training=False)

    return lambda x: np.concatenate([forward(x[i:i + 64]).numpy() for i in range(0, len(x), 64)])


def run_robustness(runs: list[dict], data, data_root, *, probe: bool = True,
                   corruptions=tuple(CORRUPTIONS), severities=SEVERITIES, seed: int = 0,
                   chunk: int = 64, log=print) -> pd.DataFrame:
    """Accuracy and macro F1 of each run (and of the 1-NN probe fitted on the
    runs' training images) on the corrupted test pages.

    ``runs``: finished runs (``experiments.load_run``) sharing one split and
    preprocessing; ``data``: their ``RunData``; ``data_root``: where the pages are.
    """
    from .leakage import PROBE_LABEL, fit_probe, probe_features
    from .preprocess import PreprocessSettings

    c0 = runs[0]["config"]
    for r in runs[1:]:
        c = r["config"]
        if (c["protocol"], c["split_seed"], c["crop"], c["fit"], c["image_size"]) != \
                (c0["protocol"], c0["split_seed"], c0["crop"], c0["fit"], c0["image_size"]):
            raise ValueError("robustness runs must share split, crop, fit and image size")
    settings = PreprocessSettings(c0["image_size"], c0["fit"], c0["crop"])
    images, y, rows = data.test
    y = np.asarray(y)
    models = {r["config"]["model"]: _predictor(r) for r in runs}
    conditions = [(name, 0) for name in corruptions[:1]] + [(n, s) for n in corruptions for s in severities]
    preds = {(m, cond): [] for m in list(models) + ([PROBE_LABEL] if probe else []) for cond in conditions}
    probe_model = fit_probe(data.train[0], data.train[1]) if probe else None
    paths_ = list(rows["path"])
    for start in range(0, len(paths_), chunk):
        pages = load_pages(data_root, paths_[start:start + chunk], WORK_SCALE * settings.size)
        for name, severity in conditions:
            x = to_model_inputs(corrupt(pages, name, severity, seed=seed + start), settings)
            for m, predict in models.items():
                preds[(m, (name, severity))].append(predict(x).argmax(1))
            if probe:
                preds[(PROBE_LABEL, (name, severity))].append(probe_model.predict(probe_features(x)))
    out = []
    majority = majority_rate(y)
    for (model, (name, severity)), parts in preds.items():
        p = np.concatenate(parts)
        acc, f1 = acc_f1(y, p)
        names = corruptions if severity == 0 else (name,)
        for n in names:  # the clean condition belongs to every curve
            out.append({"model": model, "corruption": n, "severity": severity, "level": level(n, severity),
                        "unit": CORRUPTIONS[n][0], "accuracy": acc, "f1": f1, "n_test": len(y),
                        "majority_rate": majority})
    import keras

    keras.backend.clear_session()
    table = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(list(models) + [PROBE_LABEL])}
    table["_m"], table["_c"] = table["model"].map(order), table["corruption"].map(list(corruptions).index)
    table = table.sort_values(["_m", "_c", "severity"], kind="stable").drop(columns=["_m", "_c"])
    return table.reset_index(drop=True)


def table_robustness(table: pd.DataFrame, dataset: str, profile: str) -> pd.DataFrame:
    from .figures import save_table

    save_table(table, "table_robustness", dataset, profile,
               "Robustness (section 5.2): accuracy and macro F1 on test pages corrupted before "
               "preprocessing, severity 0 (clean) to 5; the 1-NN probe is fitted on the same "
               "training images (it matches pictures, so it shows how fast exact matching breaks)")
    return table


def fig16_robustness(table: pd.DataFrame, dataset: str, profile: str):
    """Fig. 16: accuracy vs severity, one panel per corruption, one line per model."""
    import matplotlib.pyplot as plt

    from .figures import data_label, save_figure, use_style

    use_style()
    names = list(dict.fromkeys(table["corruption"]))
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), sharey=True, squeeze=False)
    models = list(dict.fromkeys(table["model"]))
    markers = "osD^v<>"
    for ax, name in zip(axes.flat, names):
        sub = table[table["corruption"] == name]
        for k, m in enumerate(models):
            s = sub[sub["model"] == m].sort_values("severity")
            # shrinking markers keep models with identical curves visible on top of each other
            ax.plot(s["severity"], s["accuracy"], marker=markers[k % len(markers)],
                    ms=max(2.5, 7 - 1.2 * k), label=m, ls="--" if "probe" in m else "-", lw=1.2)
        ax.axhline(float(sub["majority_rate"].iloc[0]), color="0.5", lw=0.8, ls=":", label="majority class")
        levels = ", ".join(f"{v:g}" for v in CORRUPTIONS[name][1])
        ax.set_title(f"{name.replace('_', ' ')}\n{CORRUPTIONS[name][0]}: {levels}", fontsize=8)
        ax.set_xlabel("Severity (0 = clean)")
        ax.set_ylim(0, 1.02)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("Test accuracy")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"Fig. 16: accuracy under acquisition corruptions (applied to the page before "
                 f"preprocessing)\n{data_label(dataset, profile)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, "fig16_robustness", dataset, profile)


def summary_sentences(table: pd.DataFrame) -> list[str]:
    """Per model: clean accuracy, the most damaging corruption at the top
    severity, and whether the curve can say anything (a model at the
    majority-class rate on clean pages has flat curves by construction)."""
    out = []
    top = int(table["severity"].max())
    for model, sub in table.groupby("model", sort=False):
        clean = float(sub.loc[sub["severity"] == 0, "accuracy"].iloc[0])
        majority = float(sub["majority_rate"].iloc[0])
        worst = sub[sub["severity"] == top].sort_values("accuracy").iloc[0]
        mean_top = float(sub.loc[sub["severity"] == top, "accuracy"].mean())
        line = (f"{model}: clean accuracy {clean:.3f}; at severity {top} mean {mean_top:.3f} over the "
                f"{sub['corruption'].nunique()} corruptions, worst {worst['corruption']} "
                f"({float(worst['accuracy']):.3f})")
        if clean <= majority + 1e-9:
            line += (f"; clean accuracy is at the majority-class rate ({majority:.3f}), so its curves "
                     "are flat by construction and say nothing about robustness")
        out.append(line + ".")
    return out
