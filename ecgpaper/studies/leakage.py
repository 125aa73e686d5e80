"""Leakage study (beyond the paper, section 5.2): how much of the accuracy is
recognising copies of training images?

The Kaggle archive holds many byte-identical copies of each ECG, so the
paper's random 70/15/15 split (section 3.1) tests the model on images it was
trained on. This module runs the paper's best VGG16 setting (batch 32, lr
1e-4, 20 epochs scaled by the profile; section 4, Table 1), and ResNet50 at the
same setting, as a repeated cross-validation: K folds repeated with R seeds
(``Profile.leakage_folds`` x ``Profile.leakage_repeats``) under two protocols,
``paper`` (the paper's random image-level split, in folds: ``StratifiedKFold``
over images, so copies land on both sides) and ``grouped`` (every duplicate
group in one fold, stratified by class: ``StratifiedGroupKFold``), VGG16 also
with the header crop; validation is carved from each fold's training part as
the protocol does. Fold ``k`` of repeat ``r`` uses CV seed ``CV_SEED + seed + r``
and model seed ``r * K + k``, so both the test images and the initialisation
vary. The CV seeds start at 100: the quick recipe was chosen on the
``grouped`` test accuracies of split seeds 0-2, and no decision saw these
folds (docs/statistics.md, "The leakage ledger"). ``kaggle`` (the archive's own
folders, a fixed split) runs once per repeat beside them.

Every mean over folds has the corrected resampled t interval of Nadeau and
Bengio (:func:`ecgpaper.metrics.corrected_resampled_t`): the folds' training
sets overlap, so their scores are not independent. The protocol gaps
(``paper`` minus ``grouped``) and the architecture comparison (VGG16 minus
ResNet50) are paired per fold (same repeat and fold number, same model seed;
for the architectures the same test images too), so they carry the seed
variance. When every fold gives exactly the same number the study says so
instead of printing a zero-width interval.

Does the CNN exploit the copies? Within the ``paper`` folds the study compares
each CNN's accuracy on the test images that have a copy (exact or near) in
the fold's train with its accuracy on those that have none (:func:`copy_effect`).

Beside the CNN runs a model-free probe: a 1-nearest-neighbour classifier on
the cached pixels (scikit-learn, seconds), on the same folds. It describes the
split, not the CNN: it answers a test image with an exact copy in train right
by construction, so its ``paper`` - ``grouped`` gap is about (share of test
images with a copy in train) x (its accuracy on them - its accuracy on the
others), a restatement of the copy count. Conclusions are computed from the
numbers (:func:`sentences`), including "no gap measurable because the
models did not learn" when the CNN stays at the majority-class rate.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ecgpaper import paths
from ecgpaper.config import SPLIT_PROTOCOLS, get_profile
from ecgpaper.metrics import acc_f1, bootstrap_sets, corrected_resampled_t, majority_rate, percentile_ci
from ecgpaper.model.pipeline import labels_to_indices
from ecgpaper.outputs import interval_columns, save_figure, save_table, use_style
from ecgpaper.paths import Workspace
from ecgpaper.runs.experiments import run_jobs, scaled_configs
from ecgpaper.runs.spill import load_spilled, spill_data
from ecgpaper.runs.store import load_predictions, load_run, record_experiment
from ecgpaper.studies.common import DataSource
from ecgpaper.studies.probe import PROBE_LABEL, nn_probe

#: The paper's best VGG16 cell (section 4, Table 1: batch 32, lr 1e-4, 20 epochs).
LEAKAGE_SPEC = dict(model="VGG16", batch_size=32, learning_rate=1e-4, epochs=20)
CNN_LABEL = "VGG16"
#: The paper's other model at the same setting, full page, under the two protocols
#: whose gap is the question: does each CNN's accuracy hold on ECGs it never saw?
SECOND_CNN_SPEC = dict(LEAKAGE_SPEC, model="ResNet50")
SECOND_CNN_PROTOCOLS = ("paper", "grouped")
N_BOOTSTRAP = 1000
#: the first cross-validation seed: the quick recipe was chosen on the `grouped` test
#: accuracies of split seeds 0-2, so the ledger's folds start well clear of them
CV_SEED = 100
#: protocols that also run with the header crop: the two whose gap is the question
#: (the ``kaggle`` x crop cell would add two CNN runs per profile and answer nothing new)
CROP_PROTOCOLS = ("paper", "grouped")
#: protocols that run as a cross-validation; the others (``kaggle``) are a fixed split
CV_PROTOCOLS = ("paper", "grouped")


def cv_design(profile: str) -> tuple[int, int]:
    """(K folds, R repeats) of the leakage study's cross-validation, from the profile
    (``Profile.leakage_folds``, ``Profile.leakage_repeats``): 2 x 1 on the CI profiles
    (the run count of their former 2 split seeds), 3 x 1 on quick, 5 x 2 on paper."""
    prof = get_profile(profile)
    return prof.leakage_folds, prof.leakage_repeats


# --------------------------------------------------------------------------
# duplicates across subsets, measured from file contents
# --------------------------------------------------------------------------

def duplicate_crossings(manifest: pd.DataFrame, files: pd.DataFrame) -> dict:
    """How many duplicates cross subsets, from the files' sha256 (exact) and
    the audit's groups (exact or near), independently of ``copy_in_train``.

    ``files``: a table with ``path``, ``sha256`` and ``group`` (``audit.files``).
    Returns ``exact_groups_crossing`` (contents found in more than one subset),
    ``groups_crossing`` (audit groups in more than one subset),
    ``test_exact_copy_in_train`` and ``test_copy_in_train`` (test images whose
    exact content / group also occurs in train), and ``n_test``.
    """
    m = manifest[["path", "subset"]].merge(files[["path", "sha256", "group"]], on="path", how="left")
    if m["sha256"].isna().any():
        raise ValueError("some manifest paths are not in the files table")
    train_sha = set(m.loc[m["subset"] == "train", "sha256"])
    train_groups = set(m.loc[m["subset"] == "train", "group"])
    test = m[m["subset"] == "test"]
    return {
        "exact_groups_crossing": int((m.groupby("sha256")["subset"].nunique() > 1).sum()),
        "groups_crossing": int((m.groupby("group")["subset"].nunique() > 1).sum()),
        "test_exact_copy_in_train": int(test["sha256"].isin(train_sha).sum()),
        "test_copy_in_train": int(test["group"].isin(train_groups).sum()),
        "n_test": int(len(test)),
    }


# --------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------

def run(profile: str, data_root=None, *, seed: int = 0, folds: int | None = None, repeats: int | None = None,
        protocols=SPLIT_PROTOCOLS, crops=(False, True), crop_protocols=CROP_PROTOCOLS,
        source: DataSource | None = None, second_cnn: bool = True, verbose: int = 0,
        log=print) -> dict:
    """Train (or reuse) the leakage runs, fold by fold, and run the probe on the same folds.

    ``folds`` x ``repeats``: the cross-validation (default: the profile's,
    :func:`cv_design`); repeat ``r`` splits with CV seed ``CV_SEED + seed + r``.
    ``paper`` and ``grouped`` run on the folds; ``kaggle`` (a fixed split) once
    per repeat. ``second_cnn``: also ResNet50 (same setting, full page) under
    ``paper`` and ``grouped``, so each of the paper's models has its own gap.
    The header-crop variant runs under ``crop_protocols`` only (default
    ``paper`` and ``grouped``); ``None``: under all.

    Returns ``{"workspace", "folds": DataFrame (one row per classifier and fold),
    "sets": {(classifier, protocol, crop): [(y, pred, groups) per fold]},
    "copy_flags", "copies": {protocol: [crossings per fold]}, "run_ids",
    "n_folds", "n_repeats", "cv_seeds"}``; also writes ``experiments/leakage.json``
    and ``tables/leakage_folds.csv``.
    """
    source = source or DataSource(profile, data_root, log=log, verbose=verbose)
    k_default, r_default = cv_design(profile)
    n_folds, n_repeats = folds or k_default, repeats or r_default
    ws = source.workspace
    files = source.prepared(0).audit.files
    rows, sets, copies, run_ids, copy_flags = [], {}, {}, [], {}
    # every (repeat, protocol, fold, crop) cell's runs first, trained together by the
    # runs engine (--jobs / Ray run them at once), then read back cell by cell
    cells, jobs = [], []
    cv_seeds = [CV_SEED + seed + r for r in range(n_repeats)]
    for r, cv_seed in enumerate(cv_seeds):
        for protocol in [p for p in protocols if source.has_protocol(p, 0)]:
            if protocol in CV_PROTOCOLS:
                names = source.cv_folds(protocol, cv_seed, n_folds)
                splits = [(k, name, source.manifest(protocol, cv_seed, name)) for k, name in enumerate(names)]
            else:  # a fixed split (the archive's folders): once per repeat
                splits = [(None, "", source.manifest(protocol, cv_seed))]
            for k, cv_fold, man in splits:
                crossing = duplicate_crossings(man, files)
                copies.setdefault(protocol, []).append(crossing)
                model_seed = r * n_folds + (k or 0)
                for crop in crops:
                    if crop and crop_protocols is not None and protocol not in crop_protocols:
                        continue
                    run_data = (source.cv_data(protocol, cv_seed, cv_fold, crop) if cv_fold
                                else source.run_data(protocol, cv_seed, crop))
                    # memory-mapped from disk: the parent holds no copy of every cell's images
                    data = load_spilled(spill_data(run_data))
                    specs = [LEAKAGE_SPEC] + ([SECOND_CNN_SPEC] if second_cnn and not crop
                                              and protocol in SECOND_CNN_PROTOCOLS else [])
                    configs = [scaled_configs([spec], profile=profile, dataset=ws.dataset, protocol=protocol,
                                              split_seed=cv_seed, crop=crop, seed=model_seed, cv_fold=cv_fold,
                                              log=log)[0]
                               for spec in specs]
                    cells.append((r, k, cv_seed, cv_fold, model_seed, protocol, crop, crossing, data, specs,
                                  configs))
                    jobs += [(config, data) for config in configs]
    records = iter(run_jobs(jobs, verbose=verbose, log=log, name="leakage"))
    for r, k, cv_seed, cv_fold, model_seed, protocol, crop, crossing, data, specs, configs in cells:
        test_rows = data.test[2]
        y = data.test[1]
        groups = test_rows["group"].astype(str).to_numpy()
        results = []
        for spec, config in zip(specs, configs):
            record = next(records)
            run_ids.append(record.run_id)
            pred = load_predictions(ws, record.run_id).set_index("path")
            pred = pred.loc[test_rows["path"]]
            results.append((spec["model"], labels_to_indices(pred["pred"]), record, config))
        results.append((PROBE_LABEL, nn_probe(data.train[0], data.train[1], data.test[0]), None, None))
        for classifier, p, run, config in results:
            acc, f1 = acc_f1(y, p)
            sets.setdefault((classifier, protocol, crop), []).append((y, p, groups))
            copy_flags.setdefault((classifier, protocol, crop), []).append(
                test_rows["copy_in_train"].to_numpy(bool))
            rows.append({"classifier": classifier, "protocol": protocol, "crop": crop,
                         "repeat": r, "fold": k, "fold_index": r * n_folds + (k or 0),
                         "split_seed": cv_seed, "cv_fold": cv_fold,
                         "model_seed": model_seed if config else None,
                         "run_id": run.run_id if run else "", "epochs": config.epochs if config else None,
                         "weights": config.weights if config else None,
                         # what shows a CNN at chance on unseen ECGs did train (fits its pages)
                         "train_accuracy": run.metrics.get("train_accuracy") if run else None,
                         "optimizer_steps": ((run.metrics.get("optimizer_steps") or {}).get("total")
                                             if run else None),
                         "n_train": len(data.train[1]), "n_test": len(y),
                         "test_with_copy_in_train": int(test_rows["copy_in_train"].sum()),
                         "test_exact_copy_in_train": crossing["test_exact_copy_in_train"],
                         "accuracy": acc, "f1": f1, "majority_rate": majority_rate(y)})
    fold_rows = pd.DataFrame(rows)
    paths.atomic_write_text(ws.table("leakage_folds"), fold_rows.to_csv(index=False, lineterminator="\n"))
    record_experiment("leakage", ws, run_ids, folds=n_folds, repeats=n_repeats, cv_seeds=cv_seeds,
                      protocols=list(copies), crops=[bool(c) for c in crops],
                      crop_protocols=None if crop_protocols is None else list(crop_protocols))
    return {"workspace": ws, "folds": fold_rows, "sets": sets, "copies": copies, "copy_flags": copy_flags,
            "run_ids": run_ids, "n_folds": n_folds, "n_repeats": n_repeats, "cv_seeds": cv_seeds}


def study_runs(study: dict, protocol: str = "grouped", crop: bool = False, fold_index: int = 0) -> list[dict]:
    """The finished CNN runs (``store.load_run``) of one fold of one cell of the study,
    one per model: e.g. the ``grouped`` runs of the first fold that notebook 06's
    robustness and calibration use (:func:`study_data` gives their data)."""
    reps = study["folds"]
    sel = reps[(reps["classifier"] != PROBE_LABEL) & (reps["protocol"] == protocol) & (reps["crop"] == crop)
               & (reps["fold_index"] == fold_index)]
    return [load_run(study["workspace"], run_id) for run_id in sel["run_id"]]


def study_data(study: dict, source: DataSource, protocol: str = "grouped", crop: bool = False,
               fold_index: int = 0):
    """The ``RunData`` of the runs :func:`study_runs` returns (their fold's test images)."""
    reps = study["folds"]
    row = reps[(reps["protocol"] == protocol) & (reps["crop"] == crop)
               & (reps["fold_index"] == fold_index)].iloc[0]
    if row["cv_fold"]:
        return source.cv_data(protocol, int(row["split_seed"]), row["cv_fold"], crop)
    return source.run_data(protocol, int(row["split_seed"]), crop)


def _mean_or_none(values) -> float | None:
    """Mean of a fold column, None when absent or empty (the probe has no training)."""
    values = None if values is None else pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if values is not None and len(values) else None


def _clip(ci, lo: float, hi: float):
    return None if ci is None else [max(lo, ci[0]), min(hi, ci[1])]


def fold_interval(values, ratio: float, *, bounds=(0.0, 1.0)) -> dict:
    """:func:`ecgpaper.metrics.corrected_resampled_t` over the folds' values (NaN
    folds left out), the interval clipped to ``bounds``; ``ci95`` None with
    ``all_equal`` when every fold agrees exactly, None with ``folds`` < 2 when
    fewer than two folds have a value."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return {"mean": float(x.mean()) if len(x) else float("nan"), "ci95": None, "naive_ci95": None,
                "all_equal": False, "folds": len(x), "df": None}
    t = corrected_resampled_t(x, ratio)
    return {**t, "ci95": _clip(t["ci95"], *bounds), "naive_ci95": _clip(t["naive_ci95"], *bounds)}


def _ratio(sub: pd.DataFrame) -> float:
    """n_test / n_train of a fold, mean over the folds (the Nadeau-Bengio correction)."""
    return float((sub["n_test"] / sub["n_train"]).mean())


def _cells(study: dict) -> list[dict]:
    """Per (classifier, protocol, crop): means over folds, corrected intervals, learned?
    A protocol without folds (``kaggle``): the group bootstrap over its runs."""
    reps = study["folds"]
    out = []
    for (classifier, protocol, crop), sets in study["sets"].items():
        sub = reps[(reps["classifier"] == classifier) & (reps["protocol"] == protocol)
                   & (reps["crop"] == crop)].sort_values("fold_index")
        cv = protocol in CV_PROTOCOLS
        boot = None
        if cv:
            acc, f1 = fold_interval(sub["accuracy"], _ratio(sub)), fold_interval(sub["f1"], _ratio(sub))
            acc_ci, f1_ci, agree = acc["ci95"], f1["ci95"], acc["all_equal"]
            method = f"corrected resampled t over {len(sub)} folds"
        else:
            boot = bootstrap_sets(sets, n_bootstrap=N_BOOTSTRAP, seed=0, resample_sets=len(sets) > 1)
            acc_ci, f1_ci = percentile_ci(boot[:, 0]), percentile_ci(boot[:, 3])
            agree = bool(acc_ci[0] == acc_ci[1])
            acc_ci, f1_ci = (None, None) if agree else (acc_ci, f1_ci)
            method = f"group bootstrap over {len(sub)} run{'s' if len(sub) > 1 else ''} (a fixed split)"
        majority = float(sub["majority_rate"].mean())
        mean = float(sub["accuracy"].mean())
        out.append({
            "classifier": classifier, "protocol": protocol, "crop": bool(crop), "folds": len(sub),
            "n_test": float(sub["n_test"].mean()), "n_train": float(sub["n_train"].mean()),
            "test_with_copy_in_train": float(sub["test_with_copy_in_train"].mean()),
            "accuracy": mean, "accuracy_ci95": acc_ci,
            "accuracy_naive_ci95": acc["naive_ci95"] if cv else None,
            "accuracy_std": float(sub["accuracy"].std(ddof=1)) if len(sub) > 1 else None,
            "accuracy_per_fold": [float(v) for v in sub["accuracy"]],
            "f1": float(sub["f1"].mean()), "f1_ci95": f1_ci,
            "all_folds_agree": bool(agree), "interval": method,
            "majority_rate": majority, "learned": bool(acc_ci[0] > majority if acc_ci else mean > majority),
            **{key: _mean_or_none(sub.get(key)) for key in ("train_accuracy", "optimizer_steps")},
            "_boot": boot, "_sub": sub,
        })
    return out


def copy_effect(study: dict, protocol: str = "paper") -> list[dict]:
    """Per classifier and crop under ``protocol``: accuracy on the test images
    with a copy in the fold's train vs on those without, and their difference,
    means over folds with corrected resampled t intervals (folds where one of the
    two subsets is empty are left out)."""
    out = []
    flags_of = study.get("copy_flags", {})
    reps = study["folds"]
    for (classifier, prot, crop), sets in study["sets"].items():
        if prot != protocol or (classifier, prot, crop) not in flags_of:
            continue
        sub = reps[(reps["classifier"] == classifier) & (reps["protocol"] == prot) & (reps["crop"] == crop)]
        ratio = _ratio(sub)
        per_fold = []
        for (y, p, _), f in zip(sets, flags_of[(classifier, prot, crop)]):
            ok, f = np.asarray(y) == np.asarray(p), np.asarray(f, bool)
            per_fold.append([ok[f].mean() if f.any() else np.nan, ok[~f].mean() if (~f).any() else np.nan])
        per_fold = np.array(per_fold, float)
        diff = per_fold[:, 0] - per_fold[:, 1]
        with_copy, without = fold_interval(per_fold[:, 0], ratio), fold_interval(per_fold[:, 1], ratio)
        d = fold_interval(diff, ratio, bounds=(-1.0, 1.0))
        mean = np.nanmean(per_fold, axis=0) if np.isfinite(per_fold).any() else [np.nan, np.nan]
        out.append({
            "classifier": classifier, "protocol": prot, "crop": bool(crop), "folds": len(sets),
            "n_copy": float(np.mean([f.sum() for f in flags_of[(classifier, prot, crop)]])),
            "n_no_copy": float(np.mean([(~f).sum() for f in flags_of[(classifier, prot, crop)]])),
            "accuracy_copy": float(mean[0]), "accuracy_copy_ci95": with_copy["ci95"],
            "accuracy_no_copy": float(mean[1]), "accuracy_no_copy_ci95": without["ci95"],
            "difference": float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan"),
            "difference_ci95": d["ci95"], "folds_with_both": int(np.isfinite(diff).sum()),
            "all_folds_agree": bool(d["all_equal"]),
            "difference_per_fold": [float(v) for v in diff],
        })
    return out


def _gap_row(gap: dict) -> dict:
    """A row of ``table_leakage_gap``: the intervals as numeric column pairs, in place."""
    row = {}
    for key, value in gap.items():
        if key.endswith("_per_fold"):
            row[key] = ", ".join(f"{v:+.3f}" for v in value)
        else:
            row.update(interval_columns(key, value) if key.endswith("_ci95") else {key: value})
    return row


def copy_effect_table(summary: dict) -> pd.DataFrame:
    """``table_leakage_copies``: :func:`copy_effect` as a table."""
    return pd.DataFrame([{
        "classifier": c["classifier"], "protocol": c["protocol"], "crop": c["crop"], "folds": c["folds"],
        "test_with_copy": c["n_copy"], "test_without_copy": c["n_no_copy"],
        "accuracy_copy": c["accuracy_copy"], **interval_columns("accuracy_copy_ci95", c["accuracy_copy_ci95"]),
        "accuracy_no_copy": c["accuracy_no_copy"],
        **interval_columns("accuracy_no_copy_ci95", c["accuracy_no_copy_ci95"]),
        "difference": c["difference"], **interval_columns("difference_ci95", c["difference_ci95"]),
        "difference_per_fold": ", ".join(f"{d:+.3f}" for d in c["difference_per_fold"]),
    } for c in summary.get("copy_effect", [])],
        columns=["classifier", "protocol", "crop", "folds", "test_with_copy", "test_without_copy",
                 "accuracy_copy", *interval_columns("accuracy_copy_ci95", None),
                 "accuracy_no_copy", *interval_columns("accuracy_no_copy_ci95", None),
                 "difference", *interval_columns("difference_ci95", None), "difference_per_fold"])


def _paired(a: pd.DataFrame, b: pd.DataFrame, column: str) -> tuple[np.ndarray, float]:
    """Per-fold differences a - b, matched on the fold index (same repeat and fold
    number, same model seed), and the mean n_test / n_train of both."""
    m = a[["fold_index", column]].merge(b[["fold_index", column]], on="fold_index", suffixes=("_a", "_b"))
    return (m[f"{column}_a"] - m[f"{column}_b"]).to_numpy(float), (_ratio(a) + _ratio(b)) / 2


def _gap(c: dict, ref: dict, classifier: str, protocol: str, crop: bool) -> dict:
    """``protocol`` minus ``grouped`` for one classifier and crop: paired per fold
    (both on folds), else (a fixed split against folds) the grouped mean's corrected
    variance plus the fixed split's bootstrap variance, t with the folds' df."""
    gap, f1_gap = c["accuracy"] - ref["accuracy"], c["f1"] - ref["f1"]
    if c["_boot"] is None:
        d_acc, ratio = _paired(c["_sub"], ref["_sub"], "accuracy")
        d_f1, _ = _paired(c["_sub"], ref["_sub"], "f1")
        acc, f1 = fold_interval(d_acc, ratio, bounds=(-1, 1)), fold_interval(d_f1, ratio, bounds=(-1, 1))
        acc_ci, f1_ci, naive, agree = acc["ci95"], f1["ci95"], acc["naive_ci95"], acc["all_equal"]
        per_fold = [float(v) for v in d_acc]
        method = f"paired per fold, corrected resampled t over {len(d_acc)} folds"
    else:
        ratio, j = _ratio(ref["_sub"]), ref["folds"]
        t = corrected_resampled_t(ref["_sub"]["accuracy"], ratio)["t"] if j > 1 else float("nan")
        cis = []
        for col, value in ((0, gap), (3, f1_gap)):
            s2 = float(ref["_sub"]["accuracy" if col == 0 else "f1"].var(ddof=1)) if j > 1 else float("nan")
            var = (1 / j + ratio) * s2 + float(np.var(c["_boot"][:, col], ddof=1))
            cis.append([max(-1.0, value - t * np.sqrt(var)), min(1.0, value + t * np.sqrt(var))]
                       if np.isfinite(var) and var > 0 else None)
        acc_ci, f1_ci = cis
        naive, agree, per_fold = None, acc_ci is None, []
        method = "fixed split vs folds: corrected variance of the grouped mean plus the split's bootstrap variance"
    return {
        "classifier": classifier, "crop": crop, "protocol": protocol, "versus": "grouped",
        "accuracy_gap": gap, "accuracy_gap_ci95": acc_ci, "accuracy_gap_naive_ci95": naive,
        "f1_gap": f1_gap, "f1_gap_ci95": f1_ci,
        "measurable": bool(acc_ci is not None and (acc_ci[0] > 0 or acc_ci[1] < 0)),
        "all_folds_agree": bool(agree), "interval": method,
        "learned": bool(c["learned"] or ref["learned"]),
        "accuracy": c["accuracy"], "accuracy_grouped": ref["accuracy"],
        "majority_rate": (c["majority_rate"] + ref["majority_rate"]) / 2,
        "folds": ref["folds"], "accuracy_gap_per_fold": per_fold,
    }


def architecture(cells: list[dict], a: str = CNN_LABEL, b: str = SECOND_CNN_SPEC["model"]) -> list[dict]:
    """VGG16 minus ResNet50 (full page), paired per fold: under each protocol (the same
    test images, different model seeds per fold, so the seed variance is in it) and
    the difference of their gaps (``paper`` - ``grouped``)."""
    by_key = {(c["classifier"], c["protocol"], c["crop"]): c for c in cells}
    out, diffs = [], {}
    for protocol in CV_PROTOCOLS:
        ca, cb = by_key.get((a, protocol, False)), by_key.get((b, protocol, False))
        if ca is None or cb is None:
            continue
        d, ratio = _paired(ca["_sub"], cb["_sub"], "accuracy")
        diffs[protocol] = (d, ratio)
        out.append({"comparison": f"{a} - {b}", "protocol": protocol, "what": "accuracy",
                    **_difference(d, ratio)})
    if set(diffs) == set(CV_PROTOCOLS) and len(diffs["paper"][0]) == len(diffs["grouped"][0]):
        d = diffs["paper"][0] - diffs["grouped"][0]
        out.append({"comparison": f"{a} - {b}", "protocol": "paper - grouped", "what": "accuracy gap",
                    **_difference(d, (diffs["paper"][1] + diffs["grouped"][1]) / 2)})
    return out


def _difference(d: np.ndarray, ratio: float) -> dict:
    i = fold_interval(d, ratio, bounds=(-1.0, 1.0))
    return {"difference": float(np.mean(d)), "difference_ci95": i["ci95"], "naive_ci95": i["naive_ci95"],
            "all_folds_agree": bool(i["all_equal"]), "folds": len(d),
            "measurable": bool(i["ci95"] is not None and (i["ci95"][0] > 0 or i["ci95"][1] < 0)),
            "difference_per_fold": [float(v) for v in d]}


def _public(cell: dict) -> dict:
    return {k: v for k, v in cell.items() if not k.startswith("_")}


def table(study: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``table_leakage`` (per classifier x protocol x crop: one row per fold, then
    the mean with its corrected interval), ``table_leakage_gap`` (paper and kaggle
    minus grouped, and VGG16 minus ResNet50) and the summary (also written to
    ``leakage_summary.json``)."""
    ws = study["workspace"]
    cells = _cells(study)
    n_folds, n_repeats = study["n_folds"], study["n_repeats"]
    rows = []
    for c in cells:
        base = {"classifier": c["classifier"], "protocol": c["protocol"], "crop": c["crop"]}
        for f in c["_sub"].to_dict("records"):
            rows.append({**base, "row": "fold", "repeat": f["repeat"], "fold": f["fold"],
                         "split_seed": f["split_seed"], "model_seed": f.get("model_seed"),
                         "n_train": f["n_train"], "n_test": f["n_test"],
                         "test_with_copy_in_train": f["test_with_copy_in_train"],
                         "accuracy": f["accuracy"], **interval_columns("accuracy_ci95", None),
                         "f1": f["f1"], **interval_columns("f1_ci95", None),
                         "majority_rate": f["majority_rate"], "above_majority": None, "interval": ""})
        rows.append({**base, "row": f"mean of {c['folds']}", "repeat": None, "fold": None,
                     "split_seed": None, "model_seed": None,
                     "n_train": c["n_train"], "n_test": c["n_test"],
                     "test_with_copy_in_train": c["test_with_copy_in_train"],
                     "accuracy": c["accuracy"], **interval_columns("accuracy_ci95", c["accuracy_ci95"]),
                     "f1": c["f1"], **interval_columns("f1_ci95", c["f1_ci95"]),
                     "majority_rate": c["majority_rate"], "above_majority": c["learned"],
                     "interval": ("all folds agree exactly: no interval" if c["all_folds_agree"]
                                  else c["interval"])})
    table = pd.DataFrame(rows)
    save_table(table, "table_leakage", ws,
               f"Leakage study (section 5.2): {CNN_LABEL} (and ResNet50, full page) batch 32, lr 1e-4 and a "
               f"1-NN pixel probe, {n_folds}-fold cross-validation repeated {n_repeats} time(s) per split "
               "protocol (paper: StratifiedKFold over images; grouped: StratifiedGroupKFold, every "
               "duplicate group in one fold), full page and (crop=True) header cropped; one row per fold, "
               "then the mean with the 95 % CI of the corrected resampled t (Nadeau & Bengio 2003); "
               "kaggle, a fixed split: group bootstrap")
    by_key = {(c["classifier"], c["protocol"], c["crop"]): c for c in cells}
    gaps = []
    for (classifier, protocol, crop), c in by_key.items():
        ref = by_key.get((classifier, "grouped", crop))
        if protocol == "grouped" or ref is None:
            continue
        gaps.append(_gap(c, ref, classifier, protocol, crop))
    arch = architecture(cells)
    gap_table = pd.DataFrame([{"kind": "protocol gap", **_gap_row(g)} for g in gaps]
                             + [{"kind": "architecture", "classifier": a["comparison"], "crop": False,
                                 "protocol": a["protocol"], "versus": "",
                                 "accuracy_gap": a["difference"],
                                 **interval_columns("accuracy_gap_ci95", a["difference_ci95"]),
                                 **interval_columns("accuracy_gap_naive_ci95", a["naive_ci95"]),
                                 "measurable": a["measurable"], "all_folds_agree": a["all_folds_agree"],
                                 "interval": f"paired per fold, corrected resampled t over {a['folds']} folds",
                                 "folds": a["folds"],
                                 "accuracy_gap_per_fold": ", ".join(f"{v:+.3f}" for v in a["difference_per_fold"])}
                                for a in arch])
    save_table(gap_table, "table_leakage_gap", ws,
               "Leakage gap: accuracy and macro F1 of each protocol minus the grouped protocol's, paired per "
               "fold (same repeat, fold number and model seed), and VGG16 minus ResNet50 paired per fold "
               "(same test images); 95 % CI: corrected resampled t (Nadeau & Bengio 2003), beside the naive "
               "t interval it corrects; 'learned': above the majority-class rate under either protocol")
    copies = {p: {"n_test": [c["n_test"] for c in v],
                  "test_with_copy_in_train": [c["test_copy_in_train"] for c in v],
                  "test_exact_copy_in_train": [c["test_exact_copy_in_train"] for c in v],
                  "groups_crossing": [c["groups_crossing"] for c in v]}
              for p, v in study["copies"].items()}
    epochs = study["folds"]["epochs"].dropna()
    summary = {
        "dataset": ws.dataset, "profile": ws.profile,
        "folds": n_folds, "repeats": n_repeats, "cv_seeds": list(study.get("cv_seeds", [])),
        "cnn": CNN_LABEL, "cnn_epochs": int(epochs.iloc[0]) if len(epochs) else None,
        "cnn_weights": _weights_of(study["folds"], CNN_LABEL),
        "weights": {c: _weights_of(study["folds"], c)
                    for c in study["folds"]["classifier"].unique() if c != PROBE_LABEL},
        "copies": copies,
        "cells": [_public(c) for c in cells],
        "gaps": gaps,
        "architecture": arch,
        "copy_effect": copy_effect(study),
    }
    save_table(copy_effect_table(summary), "table_leakage_copies", ws,
               "Does the CNN exploit copies? Within the paper folds, accuracy on the test images that "
               "have a copy (exact or near) in the fold's train vs on those that have none, mean over "
               f"{n_folds} x {n_repeats} folds; 95 % CI: corrected resampled t; the 1-NN probe, which "
               "matches pictures, for reference")
    paths.atomic_write_text(ws.results / "leakage_summary.json",
                            json.dumps(summary, indent=2) + "\n")
    return table, gap_table, summary


def _weights_of(replicates: pd.DataFrame, classifier: str) -> str | None:
    if "weights" not in replicates:
        return None
    w = replicates.loc[replicates["classifier"] == classifier, "weights"].dropna()
    return str(w.iloc[0]) if len(w) else None


def _pct(a, b) -> str:
    return f"{a:.0f}/{b:.0f}" if b else "0/0"


def _trained(summary: dict, classifier: str, crop: bool) -> str:
    """' It fits its training pages (train accuracy ... after ... optimizer steps)', from the
    `grouped` runs: a CNN at chance on unseen ECGs that fits its training set did train."""
    cell = next((c for c in summary["cells"] if (c["classifier"], c["protocol"], c["crop"])
                 == (classifier, "grouped", crop)), {})
    if cell.get("train_accuracy") is None:
        return ""
    steps = f" after {cell['optimizer_steps']:.0f} optimizer steps" if cell.get("optimizer_steps") else ""
    return (f" Under `grouped` it fits its training pages (train accuracy {cell['train_accuracy']:.2f}"
            f"{steps}, mean over {cell['folds']} folds), so it trained.")


def _ci_text(ci, agree: bool, folds: int, what: str = "corrected resampled t") -> str:
    """'95 % CI a to b (corrected resampled t over J folds)', or what stands in its place."""
    if ci is not None:
        return f"95 % CI {ci[0]:+.3f} to {ci[1]:+.3f}, {what} over {folds} folds"
    if agree:
        return f"all {folds} folds give exactly this value, so there is no spread to form an interval from"
    return f"no interval: fewer than two of the {folds} folds have a value"


def _design(summary: dict) -> str:
    seeds = summary.get("cv_seeds") or []
    return (f"{summary['folds']}-fold cross-validation repeated {summary['repeats']} time"
            f"{'s' if summary['repeats'] != 1 else ''}" + (f" (CV seeds {', '.join(map(str, seeds))})"
                                                             if seeds else ""))


def sentences(summary: dict) -> list[str]:
    """What the numbers show, in sentences computed from the summary: the design and
    the copies, each CNN's gap, VGG16 vs ResNet50, the CNN's accuracy with vs without
    a copy in train, and what the 1-NN probe says about the split."""
    out = [_design_sentence(summary)]
    out += [_gap_sentence(g, summary) for g in summary["gaps"]
            if g["protocol"] == "paper" and g["classifier"] != PROBE_LABEL]
    out += [_architecture_sentence(a) for a in summary.get("architecture", [])]
    learned = {(g["classifier"], g["crop"]): g["learned"] for g in summary["gaps"] if g["protocol"] == "paper"}
    out += [_copy_effect_sentence(c, learned) for c in summary.get("copy_effect", [])
            if c["classifier"] != PROBE_LABEL]
    return out + _probe_sentences(summary)


def _design_sentence(summary: dict) -> str:
    copies = summary["copies"]
    parts = []
    for protocol in ("paper", "grouped", "kaggle"):
        if protocol in copies:
            c = copies[protocol]
            parts.append(f"`{protocol}` {_pct(np.mean(c['test_with_copy_in_train']), np.mean(c['n_test']))}"
                         f" (exact byte copies: {np.mean(c['test_exact_copy_in_train']):.0f})")
    return (f"Design: {_design(summary)}; every mean below is over its folds, with the corrected "
            "resampled t interval (Nadeau & Bengio 2003: the folds' training sets overlap). "
            "Test images with a copy (exact or near) in the fold's train, mean per fold: "
            + ", ".join(parts) + ".")


def _gap_sentence(g: dict, summary: dict) -> str:
    """One CNN's `paper` - `grouped` gap, and what it means."""
    crop = "header cropped" if g["crop"] else "full page"
    head = (f"{g['classifier']} ({crop}): accuracy {g['accuracy']:.3f} under `paper` vs "
            f"{g['accuracy_grouped']:.3f} under `grouped`, gap {g['accuracy_gap']:+.3f} "
            f"({_ci_text(g['accuracy_gap_ci95'], g['all_folds_agree'], g['folds'], 'paired per fold, corrected resampled t')}"
            ")")
    if not g["learned"]:
        epochs = summary.get("cnn_epochs")
        weights = summary.get("weights", {}).get(g["classifier"], summary.get("cnn_weights"))
        setting = ", ".join(x for x in (
            f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else "",
            {"none": "random initialisation", "imagenet": "ImageNet weights"}.get(weights, weights or ""))
            if x)
        return (f"{head}: the models did not score above the majority-class rate "
                f"({g['majority_rate']:.3f}) under either protocol, i.e. they did not learn in "
                f"this profile ({setting}), so no gap is measurable from them; this gap is noise."
                + _trained(summary, g["classifier"], g["crop"]))
    elif g["measurable"] and g["accuracy_gap"] > 0:
        text = (f"{head}: a measurable gap; the random split scores this model higher than "
                "ECGs it never saw (`grouped`)")
        if g["accuracy_grouped"] <= g["majority_rate"]:
            weights = summary.get("weights", {}).get(g["classifier"])
            why = (" It started from random weights: no ImageNet file was reachable and this backbone "
                "has no offline stand-in (docs/standins.md), and random features do not generalise "
                "to unseen ECGs (docs/training_recipe.md, \"Two scales\")." if weights == "none" else "")
            text += (f"; under `grouped` it is not above the majority-class rate "
                     f"({g['majority_rate']:.3f}): it recognises copies, not ECG morphology."
                     f"{_trained(summary, g['classifier'], g['crop'])}{why}")
        return text if text.endswith(".") else text + "."
    elif g["measurable"]:
        return (f"{head}: measurable, but `grouped` scores higher, so the random split did not "
                "inflate this number.")
    elif g["accuracy_gap_ci95"] is None:
        return (f"{head}: every fold gives the same gap, and {g['folds']} identical folds do not "
                "establish it; more folds or repeats would.")
    else:
        return f"{head}: no measurable gap (the interval includes 0)."


def _architecture_sentence(a: dict) -> str:
    """VGG16 - ResNet50, paired per fold."""
    what = ("the gap (`paper` - `grouped`)" if a["what"] == "accuracy gap"
            else f"accuracy under `{a['protocol']}`")
    text = (f"{a['comparison']} (full page), {what}: {a['difference']:+.3f} "
            f"({_ci_text(a['difference_ci95'], a['all_folds_agree'], a['folds'], 'paired per fold (same test images, a model seed per fold), corrected resampled t')}; "
            f"per fold {', '.join(f'{d:+.3f}' for d in a['difference_per_fold'])})")
    if a["measurable"]:
        text += f": a measurable difference; {a['comparison'].split(' - ')[0 if a['difference'] > 0 else 1]} higher."
    elif a["difference_ci95"] is None:
        text += ": the folds agree exactly, so the seeds' spread cannot be measured from them."
    else:
        text += ": no measurable difference between the architectures (the interval includes 0)."
    return text


def _copy_effect_sentence(c: dict, learned: dict) -> str:
    """The CNN's accuracy on test images with vs without a copy in the fold's train."""
    crop = "header cropped" if c["crop"] else "full page"
    ci = c["difference_ci95"]
    head = (f"{c['classifier']} ({crop}), within the `paper` folds: accuracy {c['accuracy_copy']:.3f} on the "
            f"{c['n_copy']:.0f} test images with a copy in the fold's train vs {c['accuracy_no_copy']:.3f} on the "
            f"{c['n_no_copy']:.0f} without (means over {c['folds']} folds), difference "
            f"{c['difference']:+.3f}")
    if ci is None and not c.get("all_folds_agree"):
        return (f"{head}: in fewer than two folds both subsets have images, so the CNN's use of "
                "copies cannot be measured.")
    head += (f" ({_ci_text(ci, c.get('all_folds_agree', False), c.get('folds_with_both', c['folds']))}; "
             f"per fold {', '.join(f'{d:+.3f}' for d in c['difference_per_fold'])})")
    if not learned.get((c["classifier"], c["crop"]), True):
        return f"{head}: the model did not learn, so this says nothing about copies."
    elif ci is None:
        return f"{head}: every fold gives the same difference; identical folds do not establish it."
    elif ci[0] > 0:
        return (f"{head}: the CNN is measurably more accurate on images it has seen a copy of, "
                "so it exploits the copies (the two subsets are different ECGs, so part of the "
                "difference may come from which ECGs the archive copied).")
    elif ci[1] < 0:
        return (f"{head}: the CNN is measurably less accurate on images with a copy in train, "
                "so copies do not inflate its accuracy.")
    else:
        return (f"{head}: no measurable difference (the interval holds 0), so these runs do not "
                "show that the CNN exploits the copies.")


def _probe_sentences(summary: dict) -> list[str]:
    """The 1-NN probe: it describes the split (its gap restates the copy count), and
    the archive's own `kaggle` split."""
    out = []
    probe_gap = {g["crop"]: g for g in summary["gaps"]
                 if g["classifier"] == PROBE_LABEL and g["protocol"] == "paper"}
    for c in summary.get("copy_effect", []):
        if c["classifier"] != PROBE_LABEL or c["crop"] not in probe_gap or np.isnan(c["difference"]):
            continue
        g = probe_gap[c["crop"]]
        share = c["n_copy"] / max(c["n_copy"] + c["n_no_copy"], 1)
        out.append(f"The {PROBE_LABEL} ({'header cropped' if c['crop'] else 'full page'}) describes the split, "
                   f"not the CNN: it matches pictures, so it answers {c['accuracy_copy']:.3f} of the test "
                   f"images with a copy in train and {c['accuracy_no_copy']:.3f} of the others; its `paper` - "
                   f"`grouped` gap {g['accuracy_gap']:+.3f} is about the share of test images with a copy "
                   f"({share:.2f}) x that difference ({share * c['difference']:+.3f}), a restatement "
                   "of the copy count.")
    kaggle = [g for g in summary["gaps"] if g["protocol"] == "kaggle" and g["classifier"] == PROBE_LABEL
              and not g["crop"]]
    for g in kaggle:
        ci = g["accuracy_gap_ci95"]
        interval = (f"95 % CI {ci[0]:+.3f} to {ci[1]:+.3f}: the grouped mean's corrected variance plus the "
                    "fixed split's group-bootstrap variance" if ci is not None else "no interval: no spread")
        out.append(f"{PROBE_LABEL} under `kaggle` (the archive's own folders, a fixed split) vs `grouped`: "
                   f"{g['accuracy_gap']:+.3f} ({interval}).")
    return out


def figure(table: pd.DataFrame, summary: dict, ws: Workspace):
    """Fig. 14: accuracy and macro F1 per protocol, CNN and probe, full page and
    cropped, with 95 % intervals; x labels say how many test images have a
    copy in train."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    use_style()
    protocols = [p for p in ("paper", "grouped", "kaggle") if p in set(table["protocol"])]
    series = [(c, crop) for c in (CNN_LABEL, SECOND_CNN_SPEC["model"], PROBE_LABEL) for crop in (False, True)
              if ((table["classifier"] == c) & (table["crop"] == crop)).any()]
    colours = sns.color_palette("colorblind", len(series))
    cells = {(c["classifier"], c["protocol"], c["crop"]): c for c in summary["cells"]}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    width = 0.8 / max(len(series), 1)
    for ax, metric, label in ((axes[0], "accuracy", "Accuracy"), (axes[1], "f1", "Macro F1")):
        for k, (classifier, crop) in enumerate(series):
            xs, ys, lo, hi = [], [], [], []
            for i, protocol in enumerate(protocols):
                c = cells.get((classifier, protocol, crop))
                if c is None:
                    continue
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(c[metric])
                ci = c[f"{metric}_ci95"] or (c[metric], c[metric])  # folds in exact agreement: no bar
                lo.append(c[metric] - ci[0])
                hi.append(ci[1] - c[metric])
            name = f"{classifier}, {'header cropped' if crop else 'full page'}"
            ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=3, color=colours[k], label=name)
        majority = float(np.mean([c["majority_rate"] for c in summary["cells"]]))
        if metric == "accuracy":
            ax.axhline(majority, ls="--", color="0.4", lw=1, label=f"majority class ({majority:.2f})")
        ticks = []
        for protocol in protocols:
            cp = summary["copies"][protocol]
            ticks.append(f"{protocol}\n{np.mean(cp['test_with_copy_in_train']):.0f} of "
                         f"{np.mean(cp['n_test']):.0f} test images\nhave a copy in train")
        ax.set_xticks(range(len(protocols)), ticks, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{label} (mean over folds, 95 % CI)")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Fig. 14: leakage study, {CNN_LABEL} and ResNet50 (batch 32, lr 1e-4) and a 1-NN pixel probe per "
                 f"split protocol, {summary['folds']}-fold CV x {summary['repeats']} (corrected resampled t)\n{ws.label}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, "fig14_leakage", ws)


def cnn_learned(summary: dict) -> bool:
    return any(c["learned"] for c in summary["cells"] if c["classifier"] != PROBE_LABEL)

