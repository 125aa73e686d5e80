"""Honest statistics (beyond the paper, section 5.2): intervals on every
headline number and a paired test of the two paper models.

The paper reports single numbers (92 %, 81 %, Table 1, 97.58 %) from one test
fold of a few hundred images, in which the same ECG can appear several times.
This module puts a 95 % bootstrap interval on each of them, resampling
duplicate GROUPS (copies of one ECG count once), sets the paper's number
beside it with the one verdict rule of :mod:`ecgpaper.studies.verdicts`, and compares
VGG16 with ResNet50 on the very same test images by a paired group-bootstrap
interval of their accuracy difference (which drives that verdict) and
McNemar's exact test with each duplicate group as one unit. Everything is
computed from the finished runs' predictions; nothing is retrained.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ecgpaper.config import PAPER_METRICS, PAPER_RESULTS
from ecgpaper.data.splits import read_manifest
from ecgpaper.errors import UserError
from ecgpaper.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_sets,
    group_members,
    group_sign_test,
    paired_difference,
    percentile_ci,
    scores,
)
from ecgpaper.model.pipeline import labels_to_indices
from ecgpaper.outputs import format_ci, interval_columns, save_table
from ecgpaper.paths import Workspace
from ecgpaper.runs.store import Run, experiment_runs, load_predictions
from ecgpaper.studies.common import test_groups
from ecgpaper.studies.verdicts import (
    compare_with_paper,
    paired_outcome,
    paper_seed_spread,
    runs_differences,
    verdict_text,
)

N_BOOTSTRAP = BOOTSTRAP_RESAMPLES


def _runs(name: str, ws: Workspace) -> list[dict]:
    try:
        return experiment_runs(name, ws)
    except UserError:
        return []


def _test_set(ws: Workspace, run: Run) -> dict:
    pred = load_predictions(ws, run.run_id)
    y = labels_to_indices(pred["true"])
    groups = test_groups(ws.dataset, run.config, pred["path"])
    return {"path": pred["path"].tolist(), "y": y, "pred": labels_to_indices(pred["pred"]), "groups": groups}


def _copies_in_train(dataset: str, config: dict, paths) -> int:
    man = read_manifest(dataset, config["protocol"], config["split_seed"]).set_index("path")
    return int(man.loc[list(paths), "copy_in_train"].sum())


def comparison_row(label: str, ws: Workspace, runs: list[Run], metric: str,
                   paper: float, *, paper_runs: int = 1, n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """One number of the paper beside ours (the mean over ``runs`` when several,
    all on one test set): our 95 % interval over duplicate groups, the
    difference ours - paper with its interval, and the verdict of
    :mod:`ecgpaper.studies.verdicts` (``n/a: ...`` unless the runs follow the paper's
    protocol). ``paper_runs``: how many runs the paper's number averages (5.4: 5)."""
    sets = [_test_set(ws, r) for r in runs]
    k = PAPER_METRICS.index(metric)
    ours = float(np.mean([scores(s["y"], s["pred"])[k] for s in sets]))
    # for one run, the very bootstrap of its metrics.json (metrics.evaluate_predictions)
    by_group = bootstrap_sets([(s["y"], s["pred"], s["groups"]) for s in sets],
                              n_bootstrap=n_bootstrap, seed=BOOTSTRAP_SEED, paired=True)[:, k]
    differences = runs_differences(runs, ws.dataset)
    comparison = compare_with_paper(by_group, paper, ours=ours, n_test=len(sets[0]["y"]),
                                    n_groups=len(group_members(sets[0]["groups"])),
                                    seed_spread=paper_seed_spread(metric, paper_runs))
    return {
        "number": label, "test": "group bootstrap", "runs": len(runs), "ours": ours,
        **interval_columns("ci95_groups", percentile_ci(by_group)), "paper": paper,
        "difference": comparison["difference"], **interval_columns("difference_ci95", comparison["ci95"]),
        "outcome": "n/a" if differences else comparison["outcome"],
        "verdict": verdict_text(comparison, differences),
        "n_test": len(sets[0]["y"]), "distinct_ecgs_in_test": len(group_members(sets[0]["groups"])),
        "test_with_copy_in_train": _copies_in_train(ws.dataset, runs[0].config, sets[0]["path"]),
        "groups_a_better": None, "groups_b_better": None, "p_value_groups": None,
    }


def paper_comparison_rows(ws: Workspace, *, baseline_runs: list[Run] | None = None,
                          n_bootstrap: int = N_BOOTSTRAP) -> list[dict]:
    """:func:`comparison_row` for every number of the paper we have runs for:
    baseline accuracies (section 4), Table 1 and the five-run means (5.4).
    ``baseline_runs`` stand in when no ``baseline`` experiment was recorded."""
    rows = []
    baseline = _runs("baseline", ws) or [
        r for r in (baseline_runs or []) if r.config["model"] in PAPER_RESULTS["baseline"]]
    for run in baseline:
        model = run.config["model"]
        rows.append(comparison_row(f"baseline {model} accuracy", ws, [run], "accuracy",
                                   PAPER_RESULTS["baseline"][model]["accuracy"], n_bootstrap=n_bootstrap))
    for run in _runs("grid", ws):
        c = run.config
        for metric, paper in PAPER_RESULTS["grid"][(c["batch_size"], c["learning_rate"])].items():
            rows.append(comparison_row(f"Table 1 batch {c['batch_size']} lr {c['learning_rate']:g} {metric}",
                                       ws, [run], metric, paper, n_bootstrap=n_bootstrap))
    multirun = _runs("multirun", ws)
    if multirun:
        for metric, (paper, _) in PAPER_RESULTS["multirun"].items():
            rows.append(comparison_row(f"5.4 {metric} mean +- std", ws, multirun, metric,
                                       paper, paper_runs=len(multirun), n_bootstrap=n_bootstrap))
    return rows


def paired_row(label: str, ws: Workspace, run_a: Run, run_b: Run, *,
               n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """Two runs on the same test images: the accuracy difference (A - B) with its
    paired 95 % interval over duplicate groups, which drives the verdict, and
    McNemar's test over duplicate groups (:func:`group_sign_test`)."""
    a, b = _test_set(ws, run_a), _test_set(ws, run_b)
    if a["path"] != b["path"]:
        raise ValueError(f"{label}: the two runs were not tested on the same images")
    ok_a, ok_b = a["pred"] == a["y"], b["pred"] == b["y"]
    members = group_members(a["groups"])
    ci = percentile_ci(paired_difference(a["y"], a["pred"], b["pred"], a["groups"], n_bootstrap=n_bootstrap))
    name_a, name_b = run_a.config["model"], run_b.config["model"]
    test = group_sign_test(ok_a, ok_b, a["groups"])
    outcome = "n/a: collapsed" if run_a.collapsed or run_b.collapsed else paired_outcome(*ci, name_a, name_b)
    return {
        "number": label, "test": f"paired group bootstrap + McNemar over groups: {name_a} vs {name_b}",
        "runs": 2, "ours": float(ok_a.mean() - ok_b.mean()), **interval_columns("ci95_groups", ci),
        "paper": None, "difference": None, **interval_columns("difference_ci95", None), "outcome": outcome,
        "verdict": outcome,
        "n_test": len(a["y"]), "distinct_ecgs_in_test": len(members),
        "test_with_copy_in_train": _copies_in_train(ws.dataset, run_a.config, a["path"]),
        "groups_a_better": test["a_better"], "groups_b_better": test["b_better"],
        "p_value_groups": test["p_value"],
    }


def table(ws: Workspace, *, baseline_runs: list[Run] | None = None,
                     n_bootstrap: int = N_BOOTSTRAP) -> pd.DataFrame:
    """``table_statistics``: every number of the paper that we have runs for,
    beside ours with the REPORT.md verdict, and the paired VGG16 vs ResNet50
    comparisons.

    The runs are the recorded ``baseline``, ``grid``, ``multirun`` and
    ``curves`` experiments; ``baseline_runs`` (the same setting, e.g. from
    ``lightweight.run``) stand in when ``baseline`` was not
    recorded (notebook 06 run on its own)."""
    rows = paper_comparison_rows(ws, baseline_runs=baseline_runs, n_bootstrap=n_bootstrap)
    baseline = _runs("baseline", ws) or list(baseline_runs or [])
    for name in ("baseline", "curves"):
        pair = baseline if name == "baseline" else _runs(name, ws)
        runs = {r.config["model"]: r for r in pair}
        if {"VGG16", "ResNet50"} <= set(runs):
            rows.append(paired_row(f"VGG16 vs ResNet50 ({name}), accuracy difference", ws,
                                   runs["VGG16"], runs["ResNet50"], n_bootstrap=n_bootstrap))
    if not rows:
        raise UserError(f"no finished baseline, grid, multirun or curves runs for {ws.dataset}/{ws.profile}; "
                        "run notebooks 02-04 (or `python -m ecgpaper run baseline`) first")
    table = pd.DataFrame(rows)
    save_table(table, "table_statistics", ws,
               "Honest statistics (section 5.2): the paper's numbers beside ours with 95 % bootstrap "
               "intervals over duplicate groups (copies of one ECG count once), the difference and "
               "the verdict of REPORT.md (ecgpaper.studies.verdicts), and VGG16 vs ResNet50 on the same test "
               "images: paired group-bootstrap interval of the accuracy difference, McNemar over groups")
    return table


def sentences(table: pd.DataFrame) -> list[str]:
    """The paired VGG16 vs ResNet50 comparisons of :func:`table` in words (the
    paper's numbers and their verdicts are in REPORT.md's main table)."""
    lines = []
    for r in table.to_dict("records"):
        if not str(r["test"]).startswith("paired"):
            continue
        model_a, model_b = str(r["test"]).rsplit(": ", 1)[-1].split(" vs ")
        a, b, p = int(float(r["groups_a_better"])), int(float(r["groups_b_better"])), float(r["p_value_groups"])
        lines.append(f"{r['number']}: {float(r['ours']):+.4f} (paired 95 % CI over "
                     f"{r['distinct_ecgs_in_test']} duplicate groups "
                     f"{format_ci((r['ci95_groups_low'], r['ci95_groups_high']))}): {r['verdict']}. "
                     f"McNemar over groups: on {a} groups {model_a} is right more often, on {b} "
                     f"{model_b}, exact p = {p:.3g}.")
    return lines
