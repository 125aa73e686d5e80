"""What a clinician asks next (issue 21, item 4): per class, how often is an ECG
of that class found (sensitivity) and how often is one of another class not
called it (specificity), how well do the probabilities rank (AUROC, one class
against the rest), and can the probabilities be trusted (calibration)?

Read from the runs' metrics.json, nothing retrained: every run records
``clinical`` (metrics.per_class_report: intervals from the bootstrap of its
accuracy interval, resampling duplicate groups, so ~30 distinct MI ECGs behind
hundreds of copies give an interval as wide as 30 ECGs allow) and
``calibration`` (metrics.calibration_report: the multiclass Brier score,
expected calibration error and NLL of the test set before and after a
temperature fitted on the validation set of the selected checkpoint). The
exported model serves that temperature (runs.export, serve.inference).

Notebook 06 passes the leakage study's ``grouped`` runs (VGG16 and ResNet50,
the paper's best cell, replicate 0), so the numbers are those of ECGs the
models never saw. Outputs: ``table_per_class``, ``table_calibration`` and
``fig18_reliability`` (:data:`ecgpaper.catalog.OUTPUTS`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ecgpaper.errors import UserError
from ecgpaper.outputs import format_ci, interval_columns, save_figure, save_table, use_style
from ecgpaper.paths import Workspace
from ecgpaper.runs.store import Run

STATISTICS = ("sensitivity", "specificity", "auroc")
#: fewer distinct ECGs of a class than this: its sentence says how few stand behind the interval
FEW_GROUPS = 30


def _entries(run: Run) -> tuple[dict, dict]:
    m = run.metrics
    if "clinical" not in m or "calibration" not in m:
        raise UserError(f"run {run.run_id} has no per-class or calibration entries in its metrics.json "
                        "(trained by an older version); delete its folder under runs/ and run notebook 06 "
                        "again to retrain it")
    return m["clinical"], m["calibration"]


def per_class_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run and class: images and distinct ECGs of the class in the test
    set, sensitivity, specificity and AUROC with their 95 % intervals."""
    rows = []
    for run in runs:
        clinical, _ = _entries(run)
        for code, c in clinical["per_class"].items():
            row = {"model": run.config["model"], "protocol": run.config["protocol"], "class": code,
                   "positives": c["positives"], "positive_groups": c["positive_groups"]}
            for name in STATISTICS:
                value = c[name]
                row[name] = np.nan if value is None else value
                row.update(interval_columns(f"{name}_ci95", c[f"{name}_ci95"]))
            row["ci95_resamples"] = clinical["ci95_resamples"]
            row["run_id"] = run.run_id
            rows.append(row)
    return pd.DataFrame(rows)


def calibration_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: the temperature and where it was fitted, and the test set's
    Brier score, ECE and NLL before and after it."""
    rows = []
    for run in runs:
        _, cal = _entries(run)
        row = {"model": run.config["model"], "protocol": run.config["protocol"],
               "temperature": cal["temperature"], "n_val": cal["n_val"],
               "n_test": run.metrics["n_test"],
               "val_nll_before": cal["val_nll_before"], "val_nll_after": cal["val_nll_after"]}
        for score in ("brier", "ece", "nll"):
            row[f"test_{score}_before"] = cal["before"][score]
            row[f"test_{score}_after"] = cal["after"][score]
        row["run_id"] = run.run_id
        rows.append(row)
    return pd.DataFrame(rows)


def table(runs: list[Run], ws: Workspace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``table_per_class`` and ``table_calibration``; return both."""
    if not runs:
        raise UserError("no runs to describe per class: run the leakage study (notebook 06, part 1) first")
    protocols = ", ".join(sorted({f"`{r.config['protocol']}`" for r in runs}))
    per_class, calib = per_class_table(runs), calibration_table(runs)
    save_table(per_class, "table_per_class", ws,
               f"Per class, one against the rest, {protocols} split test set: sensitivity, specificity "
               "and AUROC, 95 % CI from the bootstrap of each run's metrics.json resampling duplicate "
               "groups (positive_groups: distinct ECGs of the class)")
    save_table(calib, "table_calibration", ws,
               f"Calibration of the {protocols} split test set before and after temperature scaling "
               "fitted on the validation set (multiclass Brier score 0-2, expected calibration error "
               "over 10 confidence bins, NLL in nats); the exported model serves the temperature")
    return per_class, calib


def figure(runs: list[Run], ws: Workspace):
    """Fig. 18: reliability diagrams, one panel per run: accuracy against mean
    confidence in each confidence bin, before and after temperature scaling, the
    diagonal being perfect calibration; marker area ~ images in the bin."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    use_style()
    colours = sns.color_palette("colorblind", 2)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 4.4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        _, cal = _entries(run)
        ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
        for k, (when, label) in enumerate((("before", "model output"),
                                           ("after", f"temperature {cal['temperature']:.2f}"))):
            bins = cal[when]["bins"]
            n = max(sum(b["count"] for b in bins), 1)
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "-o", color=colours[k],
                    lw=1.2, markersize=3, label=f"{label} (ECE {cal[when]['ece']:.3f})")
            ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], color=colours[k],
                       s=[400 * b["count"] / n for b in bins], alpha=0.3)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_ylabel("accuracy in the bin")
        ax.set_title(f"{run.config['model']}, {run.config['protocol']} split, {run.metrics['n_test']} test images",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Fig. 18: reliability before and after temperature scaling (fitted on validation)\n{ws.label}",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, "fig18_reliability", ws)


def _ci(row: dict, name: str) -> str:
    text = format_ci((row.get(f"{name}_ci95_low"), row.get(f"{name}_ci95_high")))
    return f" (95 % CI {text})" if text else " (no interval)"


def sentences(calib: pd.DataFrame, per_class: pd.DataFrame | None = None) -> list[str]:
    """What the numbers show, computed from the two tables (CSV as read back, or as built)."""
    out = []
    for r in calib.to_dict("records"):
        t = float(r["temperature"])
        head = (f"{r['model']} (`{r['protocol']}`): temperature {t:.2f} fitted on {int(r['n_val'])} validation "
                f"images ({'softens over-confident' if t > 1 else 'sharpens under-confident'} probabilities); "
                f"test ECE {float(r['test_ece_before']):.3f} -> {float(r['test_ece_after']):.3f}, Brier "
                f"{float(r['test_brier_before']):.3f} -> {float(r['test_brier_after']):.3f}, NLL "
                f"{float(r['test_nll_before']):.3f} -> {float(r['test_nll_after']):.3f}")
        better = float(r["test_nll_after"]) < float(r["test_nll_before"])
        out.append(head + (": calibration on unseen ECGs improved." if better else
                           ": the validation fit did not carry over to the test set (small sets), so the "
                           "served probabilities are no better calibrated than the model's own."))
    if per_class is not None and len(per_class):
        for model, rows in per_class.groupby("model", sort=False):
            rows = rows.to_dict("records")
            found = [r for r in rows if not pd.isna(r["sensitivity"]) and r["sensitivity"] != ""]
            if not found:
                continue
            worst = min(found, key=lambda r: float(r["sensitivity"]))
            few = [f"{r['class']} {int(r['positive_groups'])}" for r in rows
                   if int(r["positive_groups"]) < FEW_GROUPS]
            text = (f"{model}: lowest sensitivity {worst['class']} {float(worst['sensitivity']):.3f}"
                    f"{_ci(worst, 'sensitivity')} on {int(worst['positives'])} test images of "
                    f"{int(worst['positive_groups'])} distinct ECGs")
            if few:
                text += (f"; fewer than {FEW_GROUPS} distinct ECGs behind the intervals of "
                         f"{', '.join(few)}, so they stay wide however many copies the test set holds")
            out.append(text + ".")
    return out
