"""Honest statistics (beyond the paper, section 5.2): intervals on every
headline number and a paired test of the two paper models.

The paper reports single numbers (92 %, 81 %, Table 1, 97.58 %) from one test
fold of a few hundred images, in which the same ECG can appear several times.
This module puts a 95 % bootstrap interval on each headline number twice:
resampling test images (what the per-run ``ci95`` does) and resampling
duplicate GROUPS (copies of one ECG count once, the honest variant), and
compares VGG16 with ResNet50 on the very same test images with McNemar's exact
test and a paired bootstrap interval of their accuracy difference. Everything
is computed from the finished runs' predictions; nothing is retrained.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .beyond import (METRIC_NAMES, bootstrap_sets, fmt_ci, group_members, label_indices,
                     load_predictions, percentile_ci, scores, test_groups)
from .config import PAPER_RESULTS
from .errors import UserError
from .evaluation import mcnemar

N_BOOTSTRAP = 1000


def _runs(name: str, dataset: str, profile: str) -> list[dict]:
    from .experiments import experiment_runs

    try:
        return experiment_runs(name, dataset, profile)
    except UserError:
        return []


def _test_set(dataset: str, profile: str, run: dict) -> dict:
    pred = load_predictions(dataset, profile, run["run_id"])
    y = label_indices(pred["true"])
    groups = test_groups(dataset, run["config"], pred["path"])
    return {"path": pred["path"].tolist(), "y": y, "pred": label_indices(pred["pred"]), "groups": groups}


def _copies_in_train(dataset: str, config: dict, paths) -> int:
    from .splits import read_manifest

    man = read_manifest(dataset, config["protocol"], config["split_seed"]).set_index("path")
    return int(man.loc[list(paths), "copy_in_train"].sum())


def headline_row(label: str, dataset: str, profile: str, runs: list[dict], metric: str,
                 paper: float | None, *, n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """One headline number (mean over ``runs`` when several, all on one test
    set) with its image and duplicate-group bootstrap intervals."""
    sets = [_test_set(dataset, profile, r) for r in runs]
    k = METRIC_NAMES.index(metric)
    ours = float(np.mean([scores(s["y"], s["pred"])[k] for s in sets]))
    by_image = bootstrap_sets([(s["y"], s["pred"], np.arange(len(s["y"]))) for s in sets],
                              n_bootstrap=n_bootstrap, seed=0, paired=True)[:, k]
    by_group = bootstrap_sets([(s["y"], s["pred"], s["groups"]) for s in sets],
                              n_bootstrap=n_bootstrap, seed=0, paired=True)[:, k]
    ci_img, ci_grp = percentile_ci(by_image), percentile_ci(by_group)
    return {
        "number": label, "test": "bootstrap CI", "runs": len(runs), "ours": ours, "paper": paper,
        "ci95_images": fmt_ci(ci_img), "ci95_groups": fmt_ci(ci_grp),
        "paper_inside_ci_groups": None if paper is None else bool(ci_grp[0] <= paper <= ci_grp[1]),
        "n_test": len(sets[0]["y"]), "distinct_ecgs_in_test": len(group_members(sets[0]["groups"])),
        "test_with_copy_in_train": _copies_in_train(dataset, runs[0]["config"], sets[0]["path"]),
        "mcnemar_b": None, "mcnemar_c": None, "p_value": None,
    }


def mcnemar_row(label: str, dataset: str, profile: str, run_a: dict, run_b: dict, *,
                n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """McNemar's exact test of two runs on the same test images, and the paired
    duplicate-group bootstrap interval of their accuracy difference (A - B),
    also as numbers (``ci95_groups_bounds``)."""
    a, b = _test_set(dataset, profile, run_a), _test_set(dataset, profile, run_b)
    if a["path"] != b["path"]:
        raise ValueError(f"{label}: the two runs were not tested on the same images")
    ok_a, ok_b = a["pred"] == a["y"], b["pred"] == b["y"]
    test = mcnemar(ok_a, ok_b)
    members = group_members(a["groups"])
    rng = np.random.default_rng(0)
    diffs = np.empty(n_bootstrap)
    for i in range(n_bootstrap):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        diffs[i] = ok_a[idx].mean() - ok_b[idx].mean()
    ci = percentile_ci(diffs)
    return {
        "number": label, "test": f"McNemar (exact) + paired bootstrap: {run_a['config']['model']} "
                                 f"vs {run_b['config']['model']}", "runs": 2,
        "ours": float(ok_a.mean() - ok_b.mean()), "paper": None, "ci95_images": "",
        "ci95_groups": fmt_ci(ci), "ci95_groups_bounds": (float(ci[0]), float(ci[1])),
        "paper_inside_ci_groups": None,
        "n_test": len(a["y"]), "distinct_ecgs_in_test": len(members),
        "test_with_copy_in_train": _copies_in_train(dataset, run_a["config"], a["path"]),
        "mcnemar_b": test["b"], "mcnemar_c": test["c"], "p_value": test["p_value"],
    }


def table_statistics(dataset: str, profile: str, *, baseline_runs: list[dict] | None = None,
                     n_bootstrap: int = N_BOOTSTRAP) -> pd.DataFrame:
    """``table_statistics``: every headline number of the paper that we have
    runs for, with 95 % intervals, and the paired VGG16 vs ResNet50 tests.

    The runs are the recorded ``baseline``, ``grid``, ``multirun`` and
    ``curves`` experiments; ``baseline_runs`` (the same setting, e.g. from
    ``lightweight.run_lightweight``) stand in when ``baseline`` was not
    recorded (notebook 06 run on its own)."""
    from .figures import save_table

    rows = []
    baseline = _runs("baseline", dataset, profile) or [
        r for r in (baseline_runs or []) if r["config"]["model"] in PAPER_RESULTS["baseline"]]
    for run in baseline:
        model = run["config"]["model"]
        rows.append(headline_row(f"baseline {model} accuracy", dataset, profile, [run], "accuracy",
                                 PAPER_RESULTS["baseline"][model]["accuracy"], n_bootstrap=n_bootstrap))
    for run in _runs("grid", dataset, profile):
        c = run["config"]
        for metric, paper in PAPER_RESULTS["grid"][(c["batch_size"], c["learning_rate"])].items():
            rows.append(headline_row(f"Table 1 batch {c['batch_size']} lr {c['learning_rate']:g} {metric}",
                                     dataset, profile, [run], metric, paper, n_bootstrap=n_bootstrap))
    multirun = _runs("multirun", dataset, profile)
    if multirun:
        for metric, (paper, _) in PAPER_RESULTS["multirun"].items():
            rows.append(headline_row(f"5.4 {metric} mean of {len(multirun)} runs", dataset, profile,
                                     multirun, metric, paper, n_bootstrap=n_bootstrap))
    for name in ("baseline", "curves"):
        pair = baseline if name == "baseline" else _runs(name, dataset, profile)
        runs = {r["config"]["model"]: r for r in pair}
        if {"VGG16", "ResNet50"} <= set(runs):
            rows.append(mcnemar_row(f"VGG16 vs ResNet50 ({name}), accuracy difference", dataset, profile,
                                    runs["VGG16"], runs["ResNet50"], n_bootstrap=n_bootstrap))
    if not rows:
        raise UserError(f"no finished baseline, grid, multirun or curves runs for {dataset}/{profile}; "
                        "run notebooks 02-04 (or `python -m ecgpaper run baseline`) first")
    table = pd.DataFrame(rows).drop(columns=["ci95_groups_bounds"], errors="ignore")  # bounds: narrative.py
    save_table(table, "table_statistics", dataset, profile,
               "Honest statistics (section 5.2): the paper's headline numbers with 95 % bootstrap "
               "intervals over test images and over duplicate groups (copies of one ECG count once), "
               "and McNemar's exact test of VGG16 vs ResNet50 on the same test images")
    return table


def report_lines(table: pd.DataFrame) -> list[str]:
    """Markdown for REPORT.md: the paper's single numbers beside ours with
    intervals, and the paired tests in words."""
    lines = ["### The paper's single numbers beside ours, with 95 % intervals", "",
             "| number | paper | ours | 95 % CI (images) | 95 % CI (duplicate groups) | paper inside | "
             "test images / distinct ECGs / with a copy in train |",
             "|---|---:|---:|---|---|---|---|"]
    tests = []
    for r in table.to_dict("records"):
        if str(r["test"]).startswith("McNemar"):
            tests.append(r)
            continue
        inside = {"True": "yes", "False": "no"}.get(str(r["paper_inside_ci_groups"]), "")
        paper = f"{float(r['paper']):.4f}" if str(r["paper"]) not in ("", "None", "nan") else ""
        lines.append(f"| {r['number']} | {paper} | {float(r['ours']):.4f} | {r['ci95_images']} | "
                     f"{r['ci95_groups']} | {inside} | {r['n_test']} / {r['distinct_ecgs_in_test']} / "
                     f"{r['test_with_copy_in_train']} |")
    lines.append("")
    for r in tests:
        b, c, p = int(float(r["mcnemar_b"])), int(float(r["mcnemar_c"])), float(r["p_value"])
        model_a, model_b = str(r["test"]).rsplit(": ", 1)[-1].split(" vs ")
        if b + c == 0:
            verdict = "the two models never disagree on a test image, so the test has nothing to weigh"
        elif p < 0.05:
            verdict = "a significant difference at the 5 % level"
        else:
            verdict = "no significant difference at the 5 % level"
        lines.append(f"- {r['number']}: {float(r['ours']):+.4f} (95 % CI over duplicate groups "
                     f"{r['ci95_groups']}); McNemar: {b} images only {model_a} gets right, {c} only "
                     f"{model_b}, exact p = {p:.3g}: {verdict}.")
    if tests:
        lines.append("")
    return lines
