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
    group_sizes,
    oc_text,
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
    man = read_manifest(dataset, config["protocol"], config["split_seed"],
                        config.get("cv_fold", "")).set_index("path")
    return int(man.loc[list(paths), "copy_in_train"].sum())


#: the paper's baseline (section 4: VGG16, batch 16, lr 1e-4, 20 epochs) is Table 1's cell
#: of that setting: one result, one row, one verdict
BASELINE_CELL = (16, 1e-4)
#: the cell the paper chose on its own test set (3.3) and ran five times (5.4)
PAPER_CHOSEN_CELL = (32, 1e-4)
SECONDARY_METRICS = tuple(m for m in PAPER_METRICS if m != "accuracy")
WINNERS_CURSE = ("the paper chose this cell as its best on its own test set (3.3): its number is the maximum "
                 "of six noisy ones, so it is optimistic (winner's curse); the rule does not correct for it")


def cell_label(batch_size: int, learning_rate: float) -> str:
    """The REPORT.md label of a Table 1 cell (the baseline's cell reads as both)."""
    if (batch_size, learning_rate) == BASELINE_CELL:
        return f"baseline VGG16 = Table 1 batch {batch_size} lr {learning_rate:g}"
    return f"Table 1 batch {batch_size} lr {learning_rate:g}"


def result_labels() -> list[str]:
    """One label per result of the paper that gets a verdict (a run or the five-run
    mean; its accuracy decides, its other metrics are shown), in REPORT.md's order."""
    return ([cell_label(*BASELINE_CELL)]
            + [f"baseline {m}" for m in PAPER_RESULTS["baseline"] if m != "VGG16"]
            + [cell_label(*c) for c in PAPER_RESULTS["grid"] if c != BASELINE_CELL]
            + ["5.4 mean of 5 runs"])


def comparison_row(label: str, ws: Workspace, runs: list[Run], paper: dict, *, paper_runs: int = 1,
                   n_bootstrap: int = N_BOOTSTRAP, note: str = "") -> dict:
    """One result of the paper beside ours (the mean over ``runs`` when several, all
    on one test set), with ONE verdict, on accuracy (:mod:`ecgpaper.studies.verdicts`:
    ``n/a: ...`` unless the runs follow the paper's protocol) and its operating
    characteristics on this test set; the other metrics of ``paper`` ({metric:
    value}) are shown beside it with our 95 % intervals, without a verdict of
    their own (they move with accuracy). ``paper_runs``: how many runs the
    paper's number averages (5.4: 5). Our intervals resample duplicate groups,
    for one run the very bootstrap of its metrics.json."""
    sets = [_test_set(ws, r) for r in runs]
    ours = np.mean([scores(s["y"], s["pred"]) for s in sets], axis=0)
    by_group = bootstrap_sets([(s["y"], s["pred"], s["groups"]) for s in sets],
                              n_bootstrap=n_bootstrap, seed=BOOTSTRAP_SEED, paired=True)
    differences = runs_differences(runs, ws.dataset)
    sizes = group_sizes(sets[0]["groups"])
    c = compare_with_paper(float(ours[0]), paper["accuracy"], sizes=sizes,
                           seed_spread=paper_seed_spread("accuracy", len(runs)),
                           seed_spread_paper=paper_seed_spread("accuracy", paper_runs))
    oc = c["oc"]
    row = {
        "number": label, "test": "error-rate ratio, simulated operating characteristics", "runs": len(runs),
        "ours": float(ours[0]), **interval_columns("ci95_groups", percentile_ci(by_group[:, 0])),
        "paper": paper["accuracy"], "difference": c["difference"], **interval_columns("difference_ci95", c["ci95"]),
        "error_ratio": c["error_ratio"], **interval_columns("error_ratio_ci95", c["error_ratio_ci95"]),
        "outcome": "n/a" if differences else c["outcome"], "verdict": verdict_text(c, differences),
        "oc_consistent_if_replicated": oc["consistent_if_replicated"],
        "oc_false_call_if_replicated": oc["false_call_if_replicated"],
        "oc_lower_if_5_points_short": oc["lower_if_short"], "oc_resolves_5_points": oc["resolves_shortfall"],
        "oc_resolvable_shortfall": oc["resolvable_shortfall"], "oc_z": oc["z"],
        "operating_characteristics": oc_text(oc), "note": note,
    }
    for metric in SECONDARY_METRICS:
        k = PAPER_METRICS.index(metric)
        row.update({metric: float(ours[k]), **interval_columns(f"{metric}_ci95", percentile_ci(by_group[:, k])),
                    f"paper_{metric}": paper.get(metric)})
    return {**row, "n_test": len(sets[0]["y"]), "distinct_ecgs_in_test": len(sizes),
            "test_with_copy_in_train": _copies_in_train(ws.dataset, runs[0].config, sets[0]["path"]),
            "groups_a_better": None, "groups_b_better": None, "p_value_groups": None}


#: REPORT.md's verdicts, one row per result of the paper (result, runs, verdict), written
#: by ``report.write_report`` and read by ``narrative.report``
VERDICTS_TABLE = "table_paper_verdicts"


def paper_comparison_rows(ws: Workspace, *, baseline_runs: list[Run] | None = None,
                          n_bootstrap: int = N_BOOTSTRAP) -> list[dict]:
    """:func:`comparison_row` for every result of the paper we have runs for
    (:func:`result_labels`): the baselines (section 4), Table 1's cells and the
    five-run mean (5.4). The baseline VGG16 and Table 1's batch 16, lr 1e-4 cell
    are one setting, hence one run (run ids hash the config) and one row: the
    baseline's run, else the grid's. ``baseline_runs`` stand in when no
    ``baseline`` experiment was recorded."""
    baseline = {r.config["model"]: r for r in _runs("baseline", ws) or [
        r for r in (baseline_runs or []) if r.config["model"] in PAPER_RESULTS["baseline"]]}
    grid = {(r.config["batch_size"], r.config["learning_rate"]): r for r in _runs("grid", ws)}
    if "VGG16" in baseline:
        grid[BASELINE_CELL] = baseline.pop("VGG16")
    rows = []
    for cell, cell_paper in PAPER_RESULTS["grid"].items():
        if cell in grid:
            note = WINNERS_CURSE if cell == PAPER_CHOSEN_CELL else ""
            rows.append(comparison_row(cell_label(*cell), ws, [grid[cell]], cell_paper,
                                       n_bootstrap=n_bootstrap, note=note))
        if cell == BASELINE_CELL:
            rows += [comparison_row(f"baseline {model}", ws, [run], PAPER_RESULTS["baseline"][model],
                                    n_bootstrap=n_bootstrap) for model, run in baseline.items()]
    multirun = _runs("multirun", ws)
    if multirun:
        paper = {metric: mean for metric, (mean, _) in PAPER_RESULTS["multirun"].items()}
        rows.append(comparison_row("5.4 mean of 5 runs", ws, multirun, paper, paper_runs=5,
                                   n_bootstrap=n_bootstrap,
                                   note="the setting the paper chose on its own test set (3.3); new seeds, but "
                                        "on that test set the mean keeps part of the optimism"))
    order = {label: i for i, label in enumerate(result_labels())}
    return sorted(rows, key=lambda r: order.get(r["number"], len(order)))


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
    """``table_statistics``: every result of the paper that we have runs for,
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
    # counts of groups are integers; rows without a paired test leave them empty
    # (nullable Int64, so the CSV reads "4", not "4.0")
    table = table.astype({"groups_a_better": "Int64", "groups_b_better": "Int64"})
    save_table(table, "table_statistics", ws,
               "Honest statistics (section 5.2): each result of the paper beside ours with 95 % bootstrap "
               "intervals over duplicate groups (copies of one ECG count once), the difference, the "
               "error-rate ratio and ONE verdict per result, on accuracy, with its simulated operating "
               "characteristics on this test set (REPORT.md, ecgpaper.studies.verdicts), and VGG16 vs "
               "ResNet50 on the same test images: paired group-bootstrap interval of the accuracy "
               "difference, McNemar over groups")
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
