"""Noise robustness (beyond the paper, section 5.2: "robustness to real-world
distortions" is listed as untested).

Test-time corruptions that mimic acquisition problems of a photographed or
scanned ECG page, each at graded severities 1-5 (severity 0: clean), after
Hendrycks & Dietterich's ImageNet-C protocol: accuracy vs severity per model.

What is corrupted: the MODEL INPUT, i.e. the test images exactly as the
training cache decoded them (``RunData.test``), so the clean condition is the
run's own test set and reproduces its recorded test accuracy. An earlier
version re-decoded the pages itself: resampled to 4 x the input width, then
resampled again by the cache's resize (one resampling in training; at 224 px
also another JPEG DCT scale, 1/2 instead of 1/8, and every page at the first
page's aspect ratio). The thin traces came out a little lighter (0.6 grey
levels on average at 64 px), and on the quick twin ResNet50's "clean" accuracy
fell from its recorded 0.76 to 0.52 (VGG16: 0.78 to 0.72) without any
corruption; measured, the double resampling alone accounts for it. Strengths are defined at the model's input resolution: pixel
noise std and JPEG quality act on the input pixels; blur, wander and rotation
sizes are millimetres of paper converted with the input's own pixels per mm
(horizontal and vertical differ: ``fit="resize"`` squashes the page to a
square; see :func:`input_geometry`); occlusion covers a share of the ECG grid
as the input shows it. Rotation turns the input image (at these angles, the
same as turning the page before the squash up to a fraction of a pixel).
Runs on the ``grouped`` split (notebook 06), so the accuracies are those of
ECGs the models never saw.

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

import numpy as np
import pandas as pd
from PIL import Image

from ecgpaper.data.geometry import input_geometry
from ecgpaper.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    acc_f1,
    bootstrap_scores,
    majority_rate,
    percentile_ci,
)
from ecgpaper.model.pipeline import scaling_fn
from ecgpaper.outputs import format_ci, interval_columns, save_figure, save_table, use_style
from ecgpaper.paths import Workspace
from ecgpaper.runs.engine import in_fresh_process
from ecgpaper.runs.store import Run
from ecgpaper.studies.probe import PROBE_LABEL, fit_probe, probe_features

WANDER_PERIOD_MM = 80.0  # ~0.3 Hz at 25 mm/s, the typical respiratory baseline wander

#: name -> (what the level means, levels for severity 1..5)
CORRUPTIONS: dict[str, tuple[str, tuple[float, ...]]] = {
    "gaussian_noise": ("pixel noise std (0-255) at the model input", (8, 16, 32, 48, 64)),
    "blur": ("Gaussian blur sigma (mm of paper)", (0.25, 0.5, 1.0, 1.5, 2.0)),
    "jpeg": ("JPEG quality at the model input", (50, 30, 20, 10, 5)),
    "rotation": ("rotation (degrees)", (1, 2, 4, 6, 8)),
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
# the corruptions: float32 model inputs (n, h, w, 3) in 0..255 -> same
# --------------------------------------------------------------------------

def _geometry_of(x: np.ndarray, geometry: dict | None) -> dict:
    return geometry or input_geometry(x.shape[2])


def _gaussian_noise(x, value, seed, geometry):
    import keras

    # the layer takes stddev in [0, 1]: work on [0, 1] pixels
    noisy = keras.layers.GaussianNoise(value / 255.0, seed=seed)(x / 255.0, training=True)
    return np.asarray(noisy) * 255.0


def _blur(x, value, seed, geometry):
    import keras

    sy, sx = value * geometry["px_per_mm_y"], value * geometry["px_per_mm_x"]
    ry, rx = math.ceil(3 * sy), math.ceil(3 * sx)
    # the op pads with zeros (a dark frame): pad with the image's own edge, blur, cut back
    padded = np.pad(x, ((0, 0), (ry, ry), (rx, rx), (0, 0)), mode="edge")
    blurred = keras.ops.image.gaussian_blur(padded, kernel_size=(2 * ry + 1, 2 * rx + 1), sigma=(sy, sx))
    return np.asarray(blurred)[:, ry:ry + x.shape[1], rx:rx + x.shape[2]]


def _jpeg(x, value, seed, geometry):
    out = np.empty_like(x)
    for i, image in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(value))
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32)
    return out


def _rotation(x, value, seed, geometry):
    import keras

    layer = keras.layers.RandomRotation(factor=(value / 360.0, value / 360.0), fill_mode="constant",
                                        fill_value=255.0, seed=seed)
    return np.asarray(layer(x, training=True))


def _baseline_wander(x, value, seed, geometry):
    """Each column shifted vertically by A sin(2 pi x / period + phase): the
    slow drift baseline wander gives the traces (the grid moves with them, a
    simplification)."""
    import keras

    n, h, w, c = x.shape
    rng = np.random.default_rng(seed)
    amp = value * geometry["px_per_mm_y"]
    period = WANDER_PERIOD_MM * geometry["px_per_mm_x"]
    yy, xx, cc = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                             np.arange(c, dtype=np.float32), indexing="ij")
    out = np.empty_like(x)
    for i in range(n):
        shift = amp * np.sin(2 * np.pi * xx / period + rng.uniform(0, 2 * np.pi))
        coords = np.stack([yy - shift, xx, cc])
        out[i] = np.asarray(keras.ops.image.map_coordinates(x[i], coords, order=1,
                                                            fill_mode="constant", fill_value=255.0))
    return out


def _occlusion(x, value, seed, geometry):
    """A grey rectangle covering ``value`` of the ECG grid's area, with the
    grid's aspect ratio, centred at a seeded random point of the grid: the
    same centre at every severity, so a stronger occlusion contains a weaker."""
    n, h, w, _ = x.shape
    fl, ft, fr, fb = geometry["grid"]
    gw, gh = (fr - fl) * w, (fb - ft) * h
    rw, rh = gw * math.sqrt(value), gh * math.sqrt(value)
    rng = np.random.default_rng(seed)
    out = x.copy()
    for i in range(n):
        cx = fl * w + rng.uniform(rw / 2, gw - rw / 2)
        cy = ft * h + rng.uniform(rh / 2, gh - rh / 2)
        x0, x1 = int(round(cx - rw / 2)), int(round(cx + rw / 2))
        y0, y1 = int(round(cy - rh / 2)), int(round(cy + rh / 2))
        out[i, max(y0, 0):y1, max(x0, 0):x1] = OCCLUSION_GREY
    return out


_FUNCTIONS = {"gaussian_noise": _gaussian_noise, "blur": _blur, "jpeg": _jpeg, "rotation": _rotation,
              "baseline_wander": _baseline_wander, "occlusion": _occlusion}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0,
            geometry: dict | None = None) -> np.ndarray:
    """Corrupt model inputs (n, h, w, 3) in 0..255 at ``severity`` (0: a float32
    copy). ``geometry``: :func:`input_geometry` of the inputs (default: a full
    page squashed to the inputs' size)."""
    value = level(name, severity)
    x = np.asarray(images, np.float32)
    if severity == 0:
        return x.copy()
    return np.clip(_FUNCTIONS[name](x, value, seed, _geometry_of(x, geometry)), 0, 255).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Corrupted float inputs -> uint8, as the cache stores them."""
    return np.clip(np.asarray(x) + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------

def _predictor(run: Run):
    """uint8 batch -> class probabilities, a compiled forward of the saved model."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(run.folder / "model.keras", compile=False, safe_mode=True)
    scale = scaling_fn(run.config["scaling"], run.config["model"])

    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(scale(x), training=False)

    return lambda x: np.concatenate([forward(x[i:i + 64]).numpy() for i in range(0, len(x), 64)])


def run(runs: list[Run], data, *, probe: bool = True, corruptions=tuple(CORRUPTIONS),
        severities=SEVERITIES, seed: int = 0, chunk: int = 64, log=print) -> pd.DataFrame:
    """Accuracy and macro F1 of each run (and of the 1-NN probe fitted on the
    runs' training images) on the corrupted test images.

    ``runs``: finished runs (``store.load_run``) sharing one split and
    preprocessing (notebook 06: the leakage study's ``grouped`` runs); ``data``:
    their ``RunData``, whose test images (the training cache's decoding) are the
    clean condition. ``recorded_accuracy``: each run's own test accuracy, which
    the clean condition reproduces (a warning when it does not). The models load
    in a fresh process (``engine.in_fresh_process``), never in the caller's.
    """
    table = in_fresh_process(score_corrupted, runs, data, probe=probe, corruptions=corruptions,
                             severities=severities, seed=seed, chunk=chunk)
    n_test = len(data.test[1])
    for r in runs:
        model, acc = r.config["model"], float(r.metrics["accuracy"])
        clean_acc = float(table.loc[(table["model"] == model) & (table["severity"] == 0), "accuracy"].iloc[0])
        if abs(clean_acc - acc) > 1.5 / n_test:
            log(f"WARNING: {model}: clean accuracy {clean_acc:.3f} differs from its recorded test accuracy "
                f"{acc:.3f}: the clean inputs are not those the run was tested on")
    return table


def score_corrupted(runs: list[Run], data, *, probe: bool = True, corruptions=tuple(CORRUPTIONS),
                    severities=SEVERITIES, seed: int = 0, chunk: int = 64) -> pd.DataFrame:
    """:func:`run`'s table, computed in this process (the models load here)."""
    c0 = runs[0].config
    for r in runs[1:]:
        c = r.config
        if (c["protocol"], c["split_seed"], c.get("cv_fold", ""), c["crop"], c["fit"], c["image_size"]) != \
                (c0["protocol"], c0["split_seed"], c0.get("cv_fold", ""), c0["crop"], c0["fit"], c0["image_size"]):
            raise ValueError("robustness runs must share split, crop, fit and image size")
    images, y, rows = data.test
    if images.shape[1] != c0["image_size"]:
        raise ValueError(f"the test images are {images.shape[1]} px but the runs take {c0['image_size']} px")
    geometry = input_geometry(c0["image_size"], c0["crop"], c0["fit"])
    y = np.asarray(y)
    models = {r.config["model"]: _predictor(r) for r in runs}
    recorded = {r.config["model"]: float(r.metrics["accuracy"]) for r in runs}
    conditions = [(name, 0) for name in corruptions[:1]] + [(n, s) for n in corruptions for s in severities]
    preds = {(m, cond): [] for m in list(models) + ([PROBE_LABEL] if probe else []) for cond in conditions}
    probe_model = fit_probe(data.train[0], data.train[1]) if probe else None
    for start in range(0, len(y), chunk):
        clean = np.asarray(images[start:start + chunk])
        for name, severity in conditions:
            x = clean if severity == 0 else to_uint8(corrupt(clean, name, severity, seed=seed + start,
                                                             geometry=geometry))
            for m, predict in models.items():
                preds[(m, (name, severity))].append(predict(x).argmax(1))
            if probe:
                preds[(PROBE_LABEL, (name, severity))].append(probe_model.predict(probe_features(x)))
    out = []
    majority = majority_rate(y)
    groups = rows["group"].astype(str).to_numpy() if "group" in rows else np.arange(len(y))
    for (model, (name, severity)), parts in preds.items():
        p = np.concatenate(parts)
        acc, f1 = acc_f1(y, p)
        ci = accuracy_ci(y, p, groups)
        names = corruptions if severity == 0 else (name,)
        for n in names:  # the clean condition belongs to every curve
            out.append({"model": model, "corruption": n, "severity": severity, "level": level(n, severity),
                        "unit": CORRUPTIONS[n][0], "accuracy": acc, **interval_columns("accuracy_ci95", ci),
                        "f1": f1, "n_test": len(y),
                        "majority_rate": majority, "recorded_accuracy": recorded.get(model),
                        "protocol": c0["protocol"]})
    import keras

    keras.backend.clear_session()
    table = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(list(models) + [PROBE_LABEL])}
    table["_m"], table["_c"] = table["model"].map(order), table["corruption"].map(list(corruptions).index)
    table = table.sort_values(["_m", "_c", "severity"], kind="stable").drop(columns=["_m", "_c"])
    return table.reset_index(drop=True)


def accuracy_ci(y, pred, groups) -> list[float]:
    """95 % interval of one condition's accuracy over the test set's duplicate
    groups (copies of one ECG count once). It carries the test set's sampling
    noise; each image is corrupted once (one draw per image and condition), so the
    draw's own noise is not in it."""
    draws = bootstrap_scores([(y, pred, groups)], n_bootstrap=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED,
                             statistic=lambda t, p: np.array([np.mean(t == p)]))
    return percentile_ci(draws[:, 0, 0])


def table(table: pd.DataFrame, ws: Workspace) -> pd.DataFrame:
    save_table(table, "table_robustness", ws,
               "Robustness (section 5.2): accuracy and macro F1 on the grouped split's test images "
               "(ECGs the models never saw), decoded as in training and corrupted at the model's "
               "input resolution, severity 0 (clean: the run's own test set) to 5, accuracy with a "
               "95 % interval over duplicate groups (one corruption draw per image); the 1-NN probe "
               "is fitted on the same training images")
    return table


def figure(table: pd.DataFrame, ws: Workspace):
    """Fig. 16: accuracy vs severity, one panel per corruption, one line per model."""
    import matplotlib.pyplot as plt

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
    split = f", {table['protocol'].iloc[0]} split" if "protocol" in table else ""
    fig.suptitle(f"Fig. 16: accuracy under acquisition corruptions (at the model's input resolution"
                 f"{split})\n{ws.label}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, "fig16_robustness", ws)


def sentences(table: pd.DataFrame) -> list[str]:
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
        ci = (worst.get("accuracy_ci95_low"), worst.get("accuracy_ci95_high"))
        shown = f", 95 % CI {format_ci(ci)}" if format_ci(ci) else ""
        line = (f"{model}: clean accuracy {clean:.3f}; at severity {top} mean {mean_top:.3f} over the "
                f"{sub['corruption'].nunique()} corruptions, worst {worst['corruption']} "
                f"({float(worst['accuracy']):.3f}{shown}, one corruption draw per image)")
        if shown and float(ci[0]) <= majority:
            line += f"; that interval reaches the majority-class rate ({majority:.3f}): no better than chance"
        if clean <= majority + 1e-9:
            line += (f"; clean accuracy is at the majority-class rate ({majority:.3f}), so its curves "
                     "are flat by construction and say nothing about robustness")
        out.append(line + ".")
    return out
