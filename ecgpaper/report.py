"""``results/<dataset>/<profile>/REPORT.md``: every number the paper reports,
ours beside it with its 95 % interval, the difference and one verdict, then
every figure.

One rule gives every verdict (:mod:`ecgpaper.studies.verdicts`, docs/verdicts.md,
computed by ``significance.paper_comparison_rows``, which notebook 06's
``table_statistics`` shares): one per result of the paper, on its accuracy,
"consistent", "lower", "higher" or "inconclusive" from the interval of the
error-rate ratio ours / paper and a margin of a factor 2, each with its
operating characteristics on the run's test set, and only for runs that follow
the paper's protocol; any other run (the synthetic twin, a CPU profile, random
weights, another split or size) reads ``n/a: <what differs>``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from ecgpaper import catalog, paths
from ecgpaper.config import ERROR_RATIO_MARGIN, PAPER_RESULTS, REFERENCE_SHORTFALL, RESOLVING_POWER
from ecgpaper.errors import UserError
from ecgpaper.outputs import format_ci, format_intervals, save_table
from ecgpaper.paths import Workspace
from ecgpaper.runs.store import Run, experiment_runs
from ecgpaper.studies import calibration, interpretability, leakage, lightweight, robustness, significance
from ecgpaper.studies.significance import VERDICTS_TABLE, paper_comparison_rows

#: REPORT.md's caption of every figure (``ecgpaper.catalog``)
FIGURE_CAPTIONS = catalog.figure_captions()


def webpage_screenshot() -> Path:
    """Written by tests/test_webapp_browser.py (./run_tests.sh): the React page after it
    classified an ECG. REPORT.md shows it as Fig. 4 when it exists."""
    return paths.RESULTS / "webapp" / "screenshot.png"


def without_images(text: str) -> str:
    """REPORT.md without its embedded figures, for display inside a notebook (the links
    are relative to the report's folder; the notebook shows the figures itself)."""
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("!["))


def paper_numbers() -> list[str]:
    """A label for every result of the paper (one REPORT.md row each: one verdict
    per result, on its accuracy; significance.result_labels) and the epoch time."""
    return significance.result_labels() + ["3.5 seconds per epoch"]


TABLE_HEADER = ["| paper result | runs | ours (accuracy) | 95 % CI (duplicate groups) | paper | ours - paper "
                "(95 % CI) | error rate ours / paper (95 % CI) | precision, recall, F1: ours (95 % CI) / paper, "
                "no verdict of their own | operating characteristics on this test set (simulated) | note | "
                "verdict (on accuracy) |", "|---|---:|---:|---|---:|---|---|---|---|---|---|"]


def _secondary(r: dict) -> str:
    """Precision, recall and F1 of a result row: ours with the interval, the paper's."""
    parts = []
    for m in significance.SECONDARY_METRICS:
        if r.get(m) is None or r.get(f"paper_{m}") in (None, ""):
            continue
        ci = format_ci((r[f"{m}_ci95_low"], r[f"{m}_ci95_high"]))
        parts.append(f"{m} {float(r[m]):.4f} ({ci}) / {float(r[f'paper_{m}']):.4f}")
    return "; ".join(parts) or "the paper reports accuracy only"


def _row(r: dict) -> str:
    """A main-table row from ``significance.comparison_row``."""
    diff = f"{r['difference']:+.4f} ({format_ci((r['difference_ci95_low'], r['difference_ci95_high']), signed=True)})"
    ratio = f"{r['error_ratio']:.2f} ({r['error_ratio_ci95_low']:.2f}-{r['error_ratio_ci95_high']:.2f})"
    ours_ci = format_ci((r["ci95_groups_low"], r["ci95_groups_high"]))
    return (f"| {r['number']} | {r['runs']} | {r['ours']:.4f} | {ours_ci} | {r['paper']:.4f} | "
            f"{diff} | {ratio} | {_secondary(r)} | {r['operating_characteristics']} | {r['note']} | "
            f"{r['verdict']} |")


def precision_lines(runs: list[Run]) -> list[str]:
    """Mixed precision and XLA, when any run had them on (the paper trained in float32)."""
    out = []
    for key, what in (("mixed_precision", "mixed precision (float16 compute, float32 weights; "
                                          "the paper: float32)"),
                      ("xla", "XLA compilation of the training step (the paper: none stated)")):
        on = [r for r in runs if r.config.get(key)]
        if on:
            out.append(f"{what}: on in {len(on)} of {len(runs)} runs")
    return out


def recipe_lines(ws: Workspace) -> list[str]:
    """REPORT.md section: how the models were trained, every deviation from the paper's
    protocol (each run's config.json lists them), and optimizer steps beside the paper's."""
    runs = []
    for name in ("baseline", "grid", "curves", "multirun"):
        try:
            runs += [(name, r) for r in experiment_runs(name, ws)]
        except UserError:
            continue
    if not runs:
        return []
    lines = ["", "## How the models were trained (deviations from the paper's protocol)", ""]
    seen = []
    for _, run in runs:  # each run's config.json lists its deviations (runconfig.deviations)
        for d in run.config.get("deviations", []):
            if d not in seen:
                seen.append(d)
    seen += precision_lines([r for _, r in runs])
    lines += [f"- {d}" for d in seen] or ["- none: the paper's protocol"]
    lines += ["", "| experiment | model | batch | lr | optimizer steps (head + fine-tune) | paper's steps "
                  "| train acc | test acc | evaluated checkpoint |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, run in runs:
        c, m = run.config, run.metrics
        st = m.get("optimizer_steps") or {}
        ft = st.get("finetune", st.get("paper", 0))
        sel = m.get("selected_checkpoint") or {}
        lines.append(f"| {name} | {c['model']} | {c['batch_size']} | {c['learning_rate']:g} | "
                     f"{st.get('total', '?')} ({st.get('head', 0)} + {ft}) | {m.get('paper_steps') or '?'} | "
                     f"{m.get('train_accuracy', float('nan')):.3f} | {m['accuracy']:.3f} | "
                     f"{sel.get('phase', '?')} epoch {sel.get('epoch', '?')} |")
    return lines


def read_table(ws: Workspace, name: str) -> pd.DataFrame | None:
    f = ws.results / f"{name}.csv"
    return pd.read_csv(f, keep_default_na=False) if f.exists() else None


#: REPORT.md's "Beyond the paper" subsections: (heading, table notebook 06 wrote,
#: the study that puts it in words)
BEYOND_SECTIONS = (
    ("VGG16 vs ResNet50 on the same test images", "table_statistics", significance),
    ("Grad-CAM: where the models look", "table_gradcam_header_fraction", interpretability),
    ("Robustness to acquisition corruptions", "table_robustness", robustness),
    ("Lightweight models and the ensemble", "table_lightweight", lightweight),
)


def _bullets(heading: str, sentences: list[str]) -> list[str]:
    """A REPORT.md subsection: the heading and one bullet per sentence (nothing without sentences)."""
    return [f"### {heading}", ""] + [f"- {s}" for s in sentences] + [""] if sentences else []


def beyond_the_paper_lines(ws: Workspace) -> list[str]:
    """The "Beyond the paper" section of REPORT.md, in each study's own
    sentences from the tables notebook 06 wrote; says what is missing when it
    has not run (never raises)."""
    lines = ["", "## Beyond the paper (sections 5.2 and 5.5)", ""]
    found = False
    try:
        tables = {name: read_table(ws, name) for _, name, _ in BEYOND_SECTIONS}
        found = any(t is not None for t in tables.values())
        heading, name, study = BEYOND_SECTIONS[0]
        if tables[name] is not None:
            lines += _bullets(heading, study.sentences(tables[name]))
        leak = ws.results / "leakage_summary.json"
        if leak.exists():
            found = True
            summary = json.loads(leak.read_text())
            lines += ["### Leakage: does the split test on copies of training images?", ""]
            lines += [f"- {s}" for s in leakage.sentences(summary)]
            copies = leakage.copy_effect_table(summary)
            if len(copies):
                lines += ["", "Within the `paper` folds, accuracy on test images with and without a copy "
                              "in the fold's train (means over folds, 95 % CI: corrected resampled t, "
                              "Nadeau & Bengio 2003):", "",
                          format_intervals(copies.drop(columns=["protocol"])).to_markdown(index=False,
                                                                                          floatfmt=".3f")]
            lines.append("")
        for heading, name, study in BEYOND_SECTIONS[1:]:
            if tables[name] is not None:
                lines += _bullets(heading, study.sentences(tables[name]))
        calib, per_class = read_table(ws, "table_calibration"), read_table(ws, "table_per_class")
        if calib is not None:
            found = True
            # the tables themselves are in the Tables section (table_per_class, table_calibration)
            lines += _bullets("Per class and calibration: what a clinician asks next",
                              calibration.sentences(calib, per_class))
        ablation = read_table(ws, "table_input_ablation")
        if ablation is not None:
            found = True
            lines += ["### Inputs that match the weights: scaling x BatchNorm (3.1.1, 3.5)", "",
                      format_intervals(ablation.drop(columns=["run"])).to_markdown(index=False, floatfmt=".3f"),
                      ""]
            if "tests_batchnorm" in ablation:
                untested = ablation[(ablation["model"] != "VGG16") & ~ablation["tests_batchnorm"].astype(bool)]
                if len(untested):
                    lines += [f"{len(untested)} of the ResNet50 rows scored a head-phase checkpoint (the "
                              "transfer recipe's head trained on frozen features): their backbone never "
                              "trained, so frozen and trainable BatchNorm are the same network there and "
                              "those rows cannot tell the two modes apart.", ""]
    except Exception as exc:  # the report must build even if one table is malformed
        lines += [f"(the beyond-the-paper section could not be built: {type(exc).__name__}: {exc})", ""]
    if not found:
        lines += ["Not run yet: notebook `06_beyond_the_paper` (leakage, Grad-CAM, robustness, "
                  "lightweight models, statistics, per class and calibration).", ""]
    return lines


def write_report(ws: Workspace, *, data_root: str | None = None) -> Path:
    """Gather the finished experiments into REPORT.md; return its path."""
    synthetic = ws.synthetic
    out = ws.results
    lines = [f"# Reproduction report: {ws.label}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `ecgpaper.report`."]
    if synthetic:
        lines += ["", "> **These numbers come from the SYNTHETIC twin, not from the Kaggle ECG images "
                      "the paper used. They test the pipeline; they do not reproduce or refute the paper.**"]
    if data_root:
        lines += ["", f"Data root: `{data_root}`"]
    audit = ws.dataset_results / "audit" / "summary.json"
    if audit.exists():
        s = json.loads(audit.read_text())
        lines += ["", "## Data", "",
                  f"{s['n_files_readable']} readable files ({s['n_unreadable']} unreadable skipped), "
                  f"{s['distinct_groups']} distinct ECGs: {s['copy_fraction']:.0%} of files are copies "
                  "of another (exact or near). See `results/<dataset>/audit/`."]
        if (out / "table_audit_groups.md").exists():
            lines.append(f"- near-duplicate threshold: {s['near_threshold_bits']} of 256 phash bits, checkable in "
                         "`table_audit_phash_distances` and `table_audit_groups` (Tables) and "
                         "`fig_audit_phash_distances`; groups whose copies carry two labels: "
                         f"{s['groups_crossing_labels']}")
        for proto in ("paper", "grouped", "kaggle"):
            f = ws.dataset_results / "splits" / f"{proto}_seed0.json"
            if f.exists():
                m = json.loads(f.read_text())
                lines.append(f"- split `{proto}`: {m['totals']}, test images with a copy in train: "
                             f"{m['test_with_copy_in_train']}")

    lines += ["", "## Every number of the paper, ours beside it", "",
              "Our 95 % intervals resample duplicate groups (copies of one ECG count once). One verdict "
              "per result of the paper, on its accuracy (precision, recall and F1 move with it and are "
              "shown without one); `ecgpaper.studies.verdicts`, docs/verdicts.md: the 95 % interval of the "
              "error-rate ratio ours / paper, which also carries the paper's test-set and seed spread, inside "
              f"1/{ERROR_RATIO_MARGIN:g}-{ERROR_RATIO_MARGIN:g}: consistent; above or below 1: lower or higher; "
              "else inconclusive, saying so when this test set cannot resolve a "
              f"{REFERENCE_SHORTFALL:g} shortfall. Beside each: how the rule behaves on this very test set "
              "(its duplicate groups), by simulation: how often a perfect replication is called consistent "
              "and lower/higher, how often a true 5-point shortfall is called lower, and the smallest "
              f"shortfall it calls lower {RESOLVING_POWER:.0%} of the time. Only runs that follow the "
              "paper's protocol (Kaggle images, paper profile, ImageNet weights, the paper's split, "
              "224 px) get a verdict; others read `n/a:` and what differs. The paper chose its best cell "
              "on its own test set (3.3): that number is optimistic (see the note).", ""] + TABLE_HEADER
    missing = []

    def runs_of(name):
        try:
            return experiment_runs(name, ws)
        except UserError:
            missing.append(name)
            return []

    for name in ("baseline", "grid", "multirun"):
        runs_of(name)
    comparison = paper_comparison_rows(ws)
    lines += [_row(r) for r in comparison]
    verdicts = [{"result": r["number"], "runs": r["runs"], "verdict": r["verdict"]} for r in comparison]
    curves = runs_of("curves")
    secs = [r.metrics["epoch_seconds_mean"] for r in curves if r.metrics.get("epoch_seconds_mean")]
    if secs:
        lo, hi = PAPER_RESULTS["epoch_seconds_t4"]
        env = curves[0].environment
        device = ", ".join(g["name"] for g in env.get("gpus", [])) or f"CPU ({env.get('cpu_count')} cores)"
        verdict = (f"n/a: not a statistic; ours on {device} with {curves[0].metrics['n_train']} "
                   f"training images of {curves[0].config['image_size']} px, the paper's on a T4 "
                   "with ~2,765 images of 224 px")
        lines.append(f"| 3.5 seconds per epoch | {len(secs)} | {max(secs):.1f} (slowest run) | | {lo}-{hi} | | | | | | "
                     f"{verdict} |")
        verdicts.append({"result": "3.5 seconds per epoch", "runs": len(secs), "verdict": verdict})
    # what notebook 05's summary (narrative.report) counts: the verdicts, not REPORT.md's Markdown
    save_table(pd.DataFrame(verdicts, columns=["result", "runs", "verdict"]), VERDICTS_TABLE, ws,
               caption="One verdict per result of the paper (REPORT.md, 'Every number of the paper')")
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)} (`python -m ecgpaper run NAME --profile {ws.profile}`)."]
    lines += recipe_lines(ws)
    # notebook 06: leakage, Grad-CAM, robustness, lightweight models, statistics (never raises)
    lines += beyond_the_paper_lines(ws)

    fig_dir = ws.figures
    if webpage_screenshot().exists():  # Fig. 4: the page as the browser test last saw it
        fig_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(webpage_screenshot(), fig_dir / "fig04_webpage.png")
    lines += ["", "## Figures", ""]
    for png in sorted(fig_dir.glob("*.png")):
        caption = FIGURE_CAPTIONS.get(png.stem, png.stem.replace("_", " "))
        label = "" if png.stem == "fig04_webpage" else f" ({ws.label})"  # not from this run
        lines += [f"- `{png.relative_to(paths.ROOT) if png.is_relative_to(paths.ROOT) else png}`: "
                  f"{caption}{label}", "",
                  f"  ![{caption}]({Path(os.path.relpath(png, out)).as_posix()})", ""]
    # every table, except the verdicts: they are the main table above, restated for narrative.report
    tables = sorted(t for t in out.glob("table*.md") if t.stem != VERDICTS_TABLE)
    if tables:
        lines += ["", "## Tables", ""]
        for t in tables:
            lines += [t.read_text().strip(), ""]
    report = out / "REPORT.md"
    paths.atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    return report
