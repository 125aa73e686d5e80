"""``results/<dataset>/<profile>/REPORT.md``: every number the paper reports,
ours beside it, the difference and a one-line verdict, then every figure.

Verdicts: a single number of the paper (baseline, Table 1) is "consistent"
when it lies inside our bootstrap 95 % confidence interval; a mean of the
five-run table (section 5.4) is "reproduced" when ours is within two of the
paper's standard deviations. Numbers from the synthetic twin are labelled as
such and can never be "reproduced": the verdict then says so.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from . import paths
from .beyond import FIGURE_CAPTIONS as BEYOND_FIGURE_CAPTIONS
from .beyond import report_lines as beyond_report_lines
from .config import PAPER_RESULTS
from .errors import UserError
from .experiments import experiment_runs
from .figures import data_label

FIGURE_CAPTIONS = {
    "fig01_samples": "Fig. 1: sample ECG pages per class",
    # the page of the web service (section 3.4), screenshot by tests/test_webapp_browser.py
    "fig04_webpage": ("Fig. 4: the web page (section 3.4) after classifying an ECG, as the browser "
                      "test saw it (its own small model, trained on the synthetic twin, not this run's)"),
    "fig06_epoch_times_vgg16": "Fig. 6: VGG16 training time per epoch",
    "fig07_epoch_times_resnet50": "Fig. 7: ResNet50 training time per epoch",
    "fig08_confusion_vgg16": "Fig. 8: confusion matrix of VGG16 (baseline)",
    "fig09_confusion_resnet50": "Fig. 9: confusion matrix of ResNet50 (baseline)",
    "fig10_confusion_grid": "Fig. 10: confusion matrices of the VGG16 grid search",
    "fig11_curves_resnet50": "Fig. 11: accuracy and loss curves of ResNet50",
    "fig12_curves_vgg16": "Fig. 12: accuracy and loss curves of VGG16",
    "fig13_multirun_bars": "Fig. 13: mean +- std over independent VGG16 runs",
    **BEYOND_FIGURE_CAPTIONS,  # notebook 06: fig14-fig17
}


def webpage_screenshot() -> Path:
    """Written by tests/test_webapp_browser.py (./run_tests.sh): the React page after it
    classified an ECG. REPORT.md shows it as Fig. 4 when it exists."""
    return paths.RESULTS / "webapp" / "screenshot.png"


def without_images(text: str) -> str:
    """REPORT.md without its embedded figures, for display inside a notebook (the links
    are relative to the report's folder; the notebook shows the figures itself)."""
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("!["))


def paper_numbers() -> list[str]:
    """A label for every number the paper reports (one REPORT.md row each)."""
    labels = [f"baseline {m} accuracy" for m in PAPER_RESULTS["baseline"]]
    for (b, lr), cell in PAPER_RESULTS["grid"].items():
        labels += [f"Table 1 batch {b} lr {lr:g} {k}" for k in cell]
    labels += [f"5.4 {k} mean +- std" for k in PAPER_RESULTS["multirun"]]
    labels.append("3.5 seconds per epoch")
    return labels


def _single_verdict(ours: float, paper: float, ci, synthetic: bool) -> str:
    inside = ci is not None and ci[0] <= paper <= ci[1]
    text = ("consistent: the paper's value is inside our 95 % CI" if inside
            else "not reproduced: the paper's value is outside our 95 % CI")
    return f"{text} (synthetic twin: not comparable)" if synthetic else text


def _row(label, ours, paper, verdict) -> str:
    numbers = all(isinstance(v, (int, float)) for v in (ours, paper))
    diff = f"{ours - paper:+.4f}" if numbers else ""
    fmt = (lambda v: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)))
    return f"| {label} | {fmt(ours)} | {fmt(paper)} | {diff} | {verdict} |"


def recipe_lines(dataset: str, profile: str) -> list[str]:
    """REPORT.md section: how the models were trained, every deviation from the paper's
    protocol (each run's config.json lists them), and optimizer steps beside the paper's."""
    runs = []
    for name in ("baseline", "grid", "curves", "multirun"):
        try:
            runs += [(name, r) for r in experiment_runs(name, dataset, profile)]
        except UserError:
            continue
    if not runs:
        return []
    lines = ["", "## How the models were trained (deviations from the paper's protocol)", ""]
    seen = []
    for _, run in runs:  # each run's config.json lists its deviations (training.deviations)
        for d in run["config"].get("deviations", []):
            if d not in seen:
                seen.append(d)
    lines += [f"- {d}" for d in seen] or ["- none: the paper's protocol"]
    lines += ["", "| experiment | model | batch | lr | optimizer steps (head + fine-tune) | paper's steps "
                  "| train acc | test acc | evaluated checkpoint |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, run in runs:
        c, m = run["config"], run["metrics"]
        st = m.get("optimizer_steps") or {}
        ft = st.get("finetune", st.get("paper", 0))
        sel = m.get("selected_checkpoint") or {}
        lines.append(f"| {name} | {c['model']} | {c['batch_size']} | {c['learning_rate']:g} | "
                     f"{st.get('total', '?')} ({st.get('head', 0)} + {ft}) | {m.get('paper_steps') or '?'} | "
                     f"{m.get('train_accuracy', float('nan')):.3f} | {m['accuracy']:.3f} | "
                     f"{sel.get('phase', '?')} epoch {sel.get('epoch', '?')} |")
    return lines


def write_report(dataset: str, profile: str, *, data_root: str | None = None) -> Path:
    """Gather the finished experiments into REPORT.md; return its path."""
    synthetic = dataset.startswith("synthetic")
    out = paths.profile_results(dataset, profile)
    lines = [f"# Reproduction report: {data_label(dataset, profile)}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `ecgpaper.report`."]
    if synthetic:
        lines += ["", "> **These numbers come from the SYNTHETIC twin, not from the Kaggle ECG images "
                      "the paper used. They test the pipeline; they do not reproduce or refute the paper.**"]
    if data_root:
        lines += ["", f"Data root: `{data_root}`"]
    audit = paths.dataset_results(dataset) / "audit" / "summary.json"
    if audit.exists():
        s = json.loads(audit.read_text())
        lines += ["", "## Data", "",
                  f"{s['n_files_readable']} readable files ({s['n_unreadable']} unreadable skipped), "
                  f"{s['distinct_groups']} distinct ECGs: {s['copy_fraction']:.0%} of files are copies "
                  "of another (exact or near). See `results/<dataset>/audit/`."]
        for proto in ("paper", "grouped", "kaggle"):
            f = paths.dataset_results(dataset) / "splits" / f"{proto}_seed0.json"
            if f.exists():
                m = json.loads(f.read_text())
                lines.append(f"- split `{proto}`: {m['totals']}, test images with a copy in train: "
                             f"{m['test_with_copy_in_train']}")

    lines += ["", "## Every number of the paper, ours beside it", "",
              "| paper number | ours | paper | difference | verdict |", "|---|---:|---:|---:|---|"]
    missing = []

    def runs_of(name):
        try:
            return experiment_runs(name, dataset, profile)
        except UserError:
            missing.append(name)
            return []

    for run in runs_of("baseline"):
        model, m = run["config"]["model"], run["metrics"]
        paper = PAPER_RESULTS["baseline"][model]["accuracy"]
        lines.append(_row(f"baseline {model} accuracy", m["accuracy"], paper,
                          _single_verdict(m["accuracy"], paper, m["ci95"]["accuracy"], synthetic)))
    for run in runs_of("grid"):
        c, m = run["config"], run["metrics"]
        for k, paper in PAPER_RESULTS["grid"][(c["batch_size"], c["learning_rate"])].items():
            ci = m["ci95"].get(k) if k in ("accuracy", "f1") else None
            verdict = (_single_verdict(m[k], paper, ci, synthetic) if ci else
                       f"{'within' if abs(m[k] - paper) <= 0.02 else 'outside'} +-0.02 of the paper"
                       + (" (synthetic twin: not comparable)" if synthetic else ""))
            lines.append(_row(f"Table 1 batch {c['batch_size']} lr {c['learning_rate']:g} {k}",
                              m[k], paper, verdict))
    multirun = runs_of("multirun")
    if multirun:
        from .evaluation import mean_std

        stats = mean_std([r["metrics"] for r in multirun])
        for k, (pm, ps) in PAPER_RESULTS["multirun"].items():
            mean, std = stats[k]
            ok = abs(mean - pm) <= 2 * ps
            verdict = (f"{'reproduced' if ok else 'not reproduced'}: ours {mean:.4f} +- {std or 0:.4f} "
                       f"over {len(multirun)} runs vs the paper's spread (2 std = {2 * ps:.4f})")
            if synthetic:
                verdict += " (synthetic twin: not comparable)"
            lines.append(_row(f"5.4 {k} mean +- std", mean, pm, verdict))
    curves = runs_of("curves")
    secs = [r["metrics"]["epoch_seconds_mean"] for r in curves if r["metrics"].get("epoch_seconds_mean")]
    if secs:
        lo, hi = PAPER_RESULTS["epoch_seconds_t4"]
        env = curves[0]["environment"]
        device = ", ".join(g["name"] for g in env.get("gpus", [])) or f"CPU ({env.get('cpu_count')} cores)"
        lines.append(_row("3.5 seconds per epoch", float(max(secs)), f"{lo}-{hi}",
                          f"ours on {device} with {curves[0]['metrics']['n_train']} training images of "
                          f"{curves[0]['config']['image_size']} px; the paper: a T4, ~2,765 images of 224 px"))
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)} (`python -m ecgpaper run NAME --profile {profile}`)."]
    lines += recipe_lines(dataset, profile)
    # notebook 06: leakage, Grad-CAM, robustness, lightweight models, statistics (never raises)
    lines += beyond_report_lines(dataset, profile)

    fig_dir = paths.profile_figures(dataset, profile)
    if webpage_screenshot().exists():  # Fig. 4: the page as the browser test last saw it
        fig_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(webpage_screenshot(), fig_dir / "fig04_webpage.png")
    lines += ["", "## Figures", ""]
    for png in sorted(fig_dir.glob("*.png")):
        caption = FIGURE_CAPTIONS.get(png.stem, png.stem.replace("_", " "))
        label = "" if png.stem == "fig04_webpage" else f" ({data_label(dataset, profile)})"  # not from this run
        lines += [f"- `{png.relative_to(paths.ROOT) if png.is_relative_to(paths.ROOT) else png}`: "
                  f"{caption}{label}", "",
                  f"  ![{caption}]({Path(os.path.relpath(png, out)).as_posix()})", ""]
    tables = sorted(out.glob("table*.md"))
    if tables:
        lines += ["", "## Tables", ""]
        for t in tables:
            lines += [t.read_text().strip(), ""]
    report = out / "REPORT.md"
    paths.atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    return report
