"""Grad-CAM study (beyond the paper, section 5.2: "no interpretability").

For VGG16 and ResNet50 (last convolutional block, ``backbones.LAST_CONV_LAYER``)
this module computes Grad-CAM heat maps of the test images with the very
functions the web service uses (:mod:`ecgpaper.model.gradcam`), draws overlays
of correctly and wrongly classified test images of each class (Fig. 15), and
checks where the heat goes: the share of heat-map mass on the header band
(patient id, sex, age), on the footer band (date, heart rate, device) and on
the ECG grid, with and without the header crop. A model that reads the text
instead of the traces puts more heat on the header than the band's share of
the image.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ecgpaper.config import CLASS_CODES, CLASS_NAMES
from ecgpaper.data.geometry import page_regions
from ecgpaper.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_scores,
    majority_rate,
    percentile_ci,
)
from ecgpaper.model.pipeline import scaling_fn
from ecgpaper.outputs import interval_columns, save_figure, save_table, use_style
from ecgpaper.paths import Workspace
from ecgpaper.runs.engine import in_fresh_process
from ecgpaper.runs.store import Run
from ecgpaper.studies.common import DataSource


def _area(box) -> float:
    return 0.0 if box is None else (box[2] - box[0]) * (box[3] - box[1])


def explain_images(model_file, config: dict, images: np.ndarray, batch: int = 32):
    """Probabilities (n, classes) and Grad-CAM heat maps (n, h, w) of the
    uint8 ``images`` for a saved model, explaining each predicted class."""
    import keras

    from ecgpaper.model.gradcam import gradcam, gradcam_model

    model = keras.models.load_model(model_file, compile=False, safe_mode=True)
    grad_model = gradcam_model(model)
    scale = scaling_fn(config["scaling"], config["model"])
    probs, heats = [], []
    for i in range(0, len(images), batch):
        p, h = gradcam(grad_model, scale(np.asarray(images[i:i + batch])))
        probs.append(p)
        heats.append(h)
    keras.backend.clear_session()
    return np.concatenate(probs), np.concatenate(heats)


def explain_many(jobs: list[tuple]) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`explain_images` for each ``(model_file, config, images)``, in order (one
    process for all: :func:`run` calls it in a fresh one)."""
    return [explain_images(model_file, config, images) for model_file, config, images in jobs]


def explain_runs(runs: list[Run], source: DataSource) -> list[dict]:
    """Heat maps of every test image of finished runs (``store.load_run``); the models
    load in a fresh process (``engine.in_fresh_process``), never in the caller's."""
    tests = [source.data_for_run(run.config).test for run in runs]
    jobs = [(run.folder / "model.keras", run.config, np.asarray(images)) for run, (images, _, _) in zip(runs, tests)]
    results = in_fresh_process(explain_many, jobs)
    return [{"run": run, "images": np.asarray(images), "y": np.asarray(y), "rows": rows,
             "proba": proba, "pred": proba.argmax(1), "heat": heat}
            for run, (images, y, rows), (proba, heat) in zip(runs, tests, results)]


def heat_shares(heat: np.ndarray, crop: bool, fit: str = "resize") -> pd.DataFrame:
    """Per heat map: share of mass on the header, footer and grid (NaN when empty)."""
    from ecgpaper.model.gradcam import heat_fraction_in_box

    regions = page_regions(crop, fit)
    rows = []
    for h in heat:
        empty = not np.asarray(h).sum() > 0
        row = {}
        for name, box in regions.items():
            if empty:
                row[name] = np.nan
            else:
                row[name] = 0.0 if box is None else heat_fraction_in_box(h, box)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(regions))


def share_ci(shares: pd.Series, rows: pd.DataFrame) -> list[float] | None:
    """95 % interval of the mean heat share over the test images, resampling
    duplicate groups (copies of one ECG count once, metrics.bootstrap_scores);
    empty heat maps (NaN) leave the mean; None when every map is empty."""
    values = np.asarray(shares, float)
    if not np.isfinite(values).any():
        return None
    groups = rows["group"].astype(str).to_numpy() if "group" in rows else np.arange(len(values))
    draws = bootstrap_scores([(np.zeros(len(values), int), values, groups)], n_bootstrap=BOOTSTRAP_RESAMPLES,
                             seed=BOOTSTRAP_SEED, statistic=lambda _y, v: np.array([np.nanmean(v)]))
    return percentile_ci(draws[np.isfinite(draws[:, 0, 0]), 0, 0])


def table(entries: list[tuple[str, dict]], ws: Workspace) -> pd.DataFrame:
    """``table_gradcam_header_fraction``: per explained run, the mean share of
    Grad-CAM mass on the header band, the footer band and the ECG grid, beside
    each region's share of the image (what a uniform heat map would give)."""
    rows = []
    for label, ex in entries:
        c = ex["run"].config
        shares = heat_shares(ex["heat"], c["crop"], c["fit"])
        regions = page_regions(c["crop"], c["fit"])
        header_area = _area(regions["header"])
        header = float(shares["header"].mean()) if shares["header"].notna().any() else float("nan")
        rows.append({
            "explained": label, "model": c["model"], "crop": bool(c["crop"]), "run_id": ex["run"].run_id,
            "n_test": len(ex["heat"]), "empty_heat_maps": int(shares["grid"].isna().sum()),
            "accuracy": float((ex["pred"] == ex["y"]).mean()), "majority_rate": majority_rate(ex["y"]),
            "header_fraction": header,
            **interval_columns("header_fraction_ci95", share_ci(shares["header"], ex["rows"])
                               if header_area else None),
            "heat_map_cells": "x".join(str(v) for v in np.shape(ex["heat"])[1:3]),
            "footer_fraction": float(shares["footer"].mean()) if shares["footer"].notna().any() else float("nan"),
            "grid_fraction": float(shares["grid"].mean()) if shares["grid"].notna().any() else float("nan"),
            "header_area": header_area, "footer_area": _area(regions["footer"]),
            "grid_area": _area(regions["grid"]),
            "header_vs_uniform": header / header_area if header_area else float("nan"),
        })
    df = pd.DataFrame(rows)
    save_table(df, "table_gradcam_header_fraction", ws,
               "Grad-CAM (section 5.2): mean share of heat-map mass on the header band, footer band "
               "and ECG grid, beside each region's share of the image, the header's with a 95 % "
               "interval over duplicate groups; header_vs_uniform > 1: more heat on the header than "
               "a uniform map; with the crop the bands are not in the input; heat_map_cells: the "
               "resolution of the last convolution's map that Grad-CAM upsamples")
    return df


def sentences(table: pd.DataFrame) -> list[str]:
    """What the header-fraction table shows, one sentence per explained run."""
    out = []
    for r in table.to_dict("records"):
        crop = str(r["crop"]).lower() == "true"
        n, empty = int(r["n_test"]), int(r["empty_heat_maps"])
        head = f"{r['explained']}: "
        if empty == n:
            out.append(head + f"all {n} heat maps are empty (no feature of the last block argues for "
                       "the predicted class), so the model gives no spatial evidence to inspect.")
            continue
        tail = f" ({empty} of {n} heat maps empty)" if empty else ""
        learned = float(r["accuracy"]) > float(r["majority_rate"]) + 1e-9
        if not learned:
            tail += (f"; the model is at the majority-class rate ({float(r['majority_rate']):.0%}), so its "
                     "maps show what its initialisation responds to, not learnt evidence")
        if crop:
            out.append(head + f"the header and footer are cropped away, {float(r['grid_fraction']):.0%} "
                       f"of the heat is on the ECG grid{tail}.")
        else:
            ratio = float(r["header_vs_uniform"])
            verdict = ("more than a uniform map would put there"
                       + (": the model leans on the text band" if learned else "")
                       if ratio > 1.2 else "no more than a uniform map would put there"
                       if ratio <= 1.0 else "about what a uniform map would put there")
            lo, hi = r.get("header_fraction_ci95_low"), r.get("header_fraction_ci95_high")
            ci = (f" (95 % CI over duplicate groups {float(lo):.0%}-{float(hi):.0%})"
                  if lo is not None and not pd.isna(lo) and lo != "" else "")
            cells = f", from {r['heat_map_cells']}-cell maps" if r.get("heat_map_cells") else ""
            if ci:  # the interval decides, not the point estimate
                area = float(r["header_area"])
                verdict = ("more than a uniform map would put there" + (": the model leans on the text band"
                                                                      if learned else "")
                           if float(lo) > area else "less than a uniform map would put there"
                           if float(hi) < area else "its interval holds a uniform map's share")
            out.append(head + f"{float(r['header_fraction']):.0%} of the heat on the header band{ci}, which "
                       f"covers {float(r['header_area']):.0%} of the image ({ratio:.2f}x uniform, "
                       f"{verdict}{cells}); {float(r['grid_fraction']):.0%} on the ECG grid{tail}.")
    return out


def figure(explained: list[tuple[str, dict]], ws: Workspace):
    """Fig. 15: per model two rows (correct, wrong) x one column per class: the
    first such test image with its Grad-CAM overlay."""
    import matplotlib.pyplot as plt

    from ecgpaper.model.gradcam import overlay

    use_style()
    n_rows = 2 * len(explained)
    fig, axes = plt.subplots(n_rows, len(CLASS_CODES), figsize=(3.0 * len(CLASS_CODES), 2.9 * n_rows))
    axes = np.atleast_2d(axes)
    for m, (label, ex) in enumerate(explained):
        for w, correct in enumerate((True, False)):
            r = 2 * m + w
            for k, code in enumerate(CLASS_CODES):
                ax = axes[r, k]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                hits = np.flatnonzero((ex["y"] == k) & ((ex["pred"] == k) == correct))
                if k == 0:
                    ax.set_ylabel(f"{label}\n{'correct' if correct else 'wrong'}", fontsize=9)
                if not len(hits):
                    ax.text(0.5, 0.5, "no such\ntest image", ha="center", va="center", fontsize=9,
                            color="0.4", transform=ax.transAxes)
                    ax.set_title(f"true {code}", fontsize=8)
                    continue
                i = hits[0]
                ax.imshow(overlay(ex["images"][i], ex["heat"][i]))
                pred = CLASS_CODES[ex["pred"][i]]
                ax.set_title(f"true {code}, pred {pred} (p={ex['proba'][i].max():.2f})", fontsize=8)
    fig.suptitle("Fig. 15: Grad-CAM of the last convolutional block, first correct and wrong test "
                 f"image per class ({', '.join(f'{c} = {CLASS_NAMES[c]}' for c in CLASS_CODES)})\n"
                 f"{ws.label}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, "fig15_gradcam_grid", ws)


def run(source: DataSource, baseline_runs: list[dict], crop_pair: list[dict] = ()) -> dict:
    """Explain the baseline VGG16 and ResNet50 runs (the grid figure) and any
    further runs (the leakage study's VGG16 with and without crop) for the
    header-fraction table. Returns {"grid": [...], "table": [...]} of
    (label, explained) pairs."""
    explained = explain_runs([*baseline_runs, *crop_pair], source)
    grid = [(f"{r.config['model']} (baseline)", ex) for r, ex in zip(baseline_runs, explained)]
    table = [(f"{label}, {'header cropped' if ex['run'].config['crop'] else 'full page'}", ex)
             for label, ex in grid]
    for r, ex in zip(crop_pair, explained[len(baseline_runs):]):
        c = r.config
        table.append((f"{c['model']} (batch {c['batch_size']}), "
                      f"{'header cropped' if c['crop'] else 'full page'}", ex))
    return {"grid": grid, "table": table}
