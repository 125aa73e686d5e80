"""Leakage study (beyond the paper, section 5.2): how much of the accuracy is
recognising copies of training images?

The Kaggle archive holds many byte-identical copies of each ECG, so the
paper's random 70/15/15 split (section 3.1) tests the model on images it was
trained on. This module runs the paper's best VGG16 setting (batch 32, lr
1e-4, 20 epochs scaled by the profile; section 4, Table 1) under three split
protocols (``paper``: random; ``grouped``: every group of copies in one
subset; ``kaggle``: the archive's own folders), with and without the header
crop (the crop under ``paper`` and ``grouped``), over several seeds
(replicate ``r`` uses split seed ``seed + r`` and model seed ``r``, so both
the test images and the initialisation vary).

Does the CNN exploit the copies? Within the ``paper`` split the study compares
each CNN's accuracy on the test images that have a copy (exact or near) in
train with its accuracy on those that have none (:func:`copy_effect`), over
all seeds, with a two-stage bootstrap (seeds, then duplicate groups within
each seed's test set), so the interval carries both the test sampling and the
seed-to-seed spread. The protocol gaps (``paper`` minus ``grouped``) use the
same bootstrap.

Beside the CNN runs a model-free probe: a 1-nearest-neighbour classifier on
the cached pixels (scikit-learn, seconds). It describes the split, not the
CNN: it answers a test image with an exact copy in train right by
construction, so its ``paper`` - ``grouped`` gap is about (share of test
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
from ecgpaper.metrics import acc_f1, bootstrap_sets, group_members, majority_rate, percentile_ci
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
#: protocols that also run with the header crop: the two whose gap is the question
#: (the ``kaggle`` x crop cell would add two CNN runs per profile and answer nothing new)
CROP_PROTOCOLS = ("paper", "grouped")


def n_replicates(profile: str) -> int:
    """Seeds per cell (``Profile.leakage_replicates``): 2 on the CI profiles, 3 otherwise: with 2, the
    seed stage of the bootstrap (seeds, then duplicate groups) has almost nothing
    to resample, and the quick profile's ~47 test images need the third."""
    return get_profile(profile).leakage_replicates


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

def run(profile: str, data_root=None, *, seed: int = 0, n_seeds: int | None = None,
                protocols=SPLIT_PROTOCOLS, crops=(False, True), crop_protocols=CROP_PROTOCOLS,
                source: DataSource | None = None, second_cnn: bool = True, verbose: int = 0,
                log=print) -> dict:
    """Train (or reuse) the leakage runs and run the probe on the same splits.

    ``second_cnn``: also ResNet50 (same setting, full page) under ``paper`` and
    ``grouped``, so each of the paper's models has its own gap.

    The header-crop variant runs under ``crop_protocols`` only (default
    ``paper`` and ``grouped``, where the gap is measured); ``None``: under all.

    Returns ``{"workspace", "replicates": DataFrame, "sets": {(classifier,
    protocol, crop): [(y, pred, groups), ...]}, "copies": {protocol: [crossings
    per replicate]}, "run_ids"}``; also writes ``experiments/leakage.json``.
    """
    source = source or DataSource(profile, data_root, log=log, verbose=verbose)
    n_seeds = n_seeds or n_replicates(profile)
    ws = source.workspace
    rows, sets, copies, run_ids, copy_flags = [], {}, {}, [], {}
    # every (split seed, protocol, crop) cell's runs first, trained together by the
    # runs engine (--jobs / Ray run them at once), then read back cell by cell
    cells, jobs = [], []
    for r in range(n_seeds):
        split_seed = seed + r
        present = [p for p in protocols if source.has_protocol(p, split_seed)]
        for protocol in present:
            files = source.prepared(split_seed).audit.files
            crossing = duplicate_crossings(source.manifest(protocol, split_seed), files)
            copies.setdefault(protocol, []).append(crossing)
            for crop in crops:
                if crop and crop_protocols is not None and protocol not in crop_protocols:
                    continue
                # memory-mapped from disk: the parent holds no copy of every cell's images
                data = load_spilled(spill_data(source.run_data(protocol, split_seed, crop)))
                specs = [LEAKAGE_SPEC] + ([SECOND_CNN_SPEC] if second_cnn and not crop
                                          and protocol in SECOND_CNN_PROTOCOLS else [])
                configs = [scaled_configs([spec], profile=profile, dataset=ws.dataset, protocol=protocol,
                                          split_seed=split_seed, crop=crop, seed=r, log=log)[0]
                           for spec in specs]
                cells.append((r, split_seed, protocol, crop, crossing, data, specs, configs))
                jobs += [(config, data) for config in configs]
    records = iter(run_jobs(jobs, verbose=verbose, log=log, name="leakage"))
    for r, split_seed, protocol, crop, crossing, data, specs, configs in cells:
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
                         "replicate": r, "split_seed": split_seed,
                         "model_seed": r if config else None,
                         "run_id": run.run_id if run else "", "epochs": config.epochs if config else None,
                         "weights": config.weights if config else None,
                         # what shows a CNN at chance on unseen ECGs did train (fits its pages)
                         "train_accuracy": run.metrics.get("train_accuracy") if run else None,
                         "optimizer_steps": ((run.metrics.get("optimizer_steps") or {}).get("total")
                                             if run else None),
                         "n_test": len(y),
                         "test_with_copy_in_train": int(test_rows["copy_in_train"].sum()),
                         "test_exact_copy_in_train": crossing["test_exact_copy_in_train"],
                         "accuracy": acc, "f1": f1, "majority_rate": majority_rate(y)})
    replicates = pd.DataFrame(rows)
    paths.atomic_write_text(ws.table("leakage_replicates"),
                            replicates.to_csv(index=False, lineterminator="\n"))
    record_experiment("leakage", ws, run_ids, seeds=n_seeds, split_seed=seed,
                      protocols=list(copies), crops=[bool(c) for c in crops],
                      crop_protocols=None if crop_protocols is None else list(crop_protocols))
    return {"workspace": ws, "replicates": replicates, "sets": sets,
            "copies": copies, "copy_flags": copy_flags, "run_ids": run_ids, "n_seeds": n_seeds}


def study_runs(study: dict, protocol: str = "grouped", crop: bool = False, replicate: int = 0) -> list[dict]:
    """The finished CNN runs (``store.load_run``) of one cell of the study,
    one per model: e.g. the ``grouped`` runs that notebook 06's robustness uses."""
    reps = study["replicates"]
    sel = reps[(reps["classifier"] != PROBE_LABEL) & (reps["protocol"] == protocol) & (reps["crop"] == crop)
               & (reps["replicate"] == replicate)]
    return [load_run(study["workspace"], run_id) for run_id in sel["run_id"]]


def _mean_or_none(values) -> float | None:
    """Mean of a replicate column, None when absent or empty (the probe has no training)."""
    values = None if values is None else pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if values is not None and len(values) else None


def _cells(study: dict) -> list[dict]:
    """Per (classifier, protocol, crop): means, group-bootstrap CIs, learned?"""
    reps = study["replicates"]
    out = []
    for (classifier, protocol, crop), sets in study["sets"].items():
        boot = bootstrap_sets(sets, n_bootstrap=N_BOOTSTRAP, seed=0, resample_sets=True)
        sub = reps[(reps["classifier"] == classifier) & (reps["protocol"] == protocol) & (reps["crop"] == crop)]
        acc_ci, f1_ci = percentile_ci(boot[:, 0]), percentile_ci(boot[:, 3])
        majority = float(sub["majority_rate"].mean())
        out.append({
            "classifier": classifier, "protocol": protocol, "crop": bool(crop), "replicates": len(sub),
            "n_test": float(sub["n_test"].mean()),
            "test_with_copy_in_train": float(sub["test_with_copy_in_train"].mean()),
            "accuracy": float(sub["accuracy"].mean()), "accuracy_ci95": acc_ci,
            "accuracy_std": float(sub["accuracy"].std(ddof=1)) if len(sub) > 1 else None,
            "f1": float(sub["f1"].mean()), "f1_ci95": f1_ci,
            "majority_rate": majority, "learned": bool(acc_ci[0] > majority),
            **{key: _mean_or_none(sub.get(key)) for key in ("train_accuracy", "optimizer_steps")},
            "_boot": boot,
        })
    return out


def copy_effect(study: dict, protocol: str = "paper", n_bootstrap: int = N_BOOTSTRAP) -> list[dict]:
    """Per classifier and crop under ``protocol``: accuracy on the test images
    with a copy in train vs on those without, and their difference, means over
    seeds with 95 % intervals from a two-stage bootstrap (seeds with
    replacement, then duplicate groups within each seed's test set; a group
    either has a copy in train or not, so each draw keeps the two subsets)."""
    out = []
    flags_of = study.get("copy_flags", {})
    for (classifier, prot, crop), sets in study["sets"].items():
        if prot != protocol or (classifier, prot, crop) not in flags_of:
            continue
        reps = [(np.asarray(y) == np.asarray(p), np.asarray(f, bool), group_members(g))
                for (y, p, g), f in zip(sets, flags_of[(classifier, prot, crop)])]
        per_seed = np.array([[ok[f].mean() if f.any() else np.nan, ok[~f].mean() if (~f).any() else np.nan]
                             for ok, f, _ in reps])
        rng = np.random.default_rng(7)
        boot = np.empty((n_bootstrap, 2))
        for b in range(n_bootstrap):
            values = []
            for i in rng.integers(0, len(reps), len(reps)):
                ok, f, members = reps[i]
                idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
                fi = f[idx]
                values.append([ok[idx][fi].mean() if fi.any() else np.nan,
                               ok[idx][~fi].mean() if (~fi).any() else np.nan])
            boot[b] = np.nanmean(values, axis=0) if np.isfinite(values).any() else np.nan
        diff = boot[:, 0] - boot[:, 1]
        finite = np.isfinite(diff)
        mean = np.nanmean(per_seed, axis=0) if np.isfinite(per_seed).any() else [np.nan, np.nan]
        out.append({
            "classifier": classifier, "protocol": prot, "crop": bool(crop), "seeds": len(reps),
            "n_copy": float(np.mean([f.sum() for _, f, _ in reps])),
            "n_no_copy": float(np.mean([(~f).sum() for _, f, _ in reps])),
            "accuracy_copy": float(mean[0]), "accuracy_copy_ci95": _ci_or_none(boot[:, 0]),
            "accuracy_no_copy": float(mean[1]), "accuracy_no_copy_ci95": _ci_or_none(boot[:, 1]),
            "difference": float(mean[0] - mean[1]),
            "difference_ci95": percentile_ci(diff[finite]) if finite.sum() > 1 else None,
            "difference_per_seed": [float(a - b) for a, b in per_seed],
        })
    return out


def _gap_row(gap: dict) -> dict:
    """A row of ``table_leakage_gap``: the intervals as numeric column pairs, in place."""
    row = {}
    for key, value in gap.items():
        row.update(interval_columns(key, value) if key.endswith("_ci95") else {key: value})
    return row


def _ci_or_none(values):
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return percentile_ci(values) if len(values) > 1 else None


def copy_effect_table(summary: dict) -> pd.DataFrame:
    """``table_leakage_copies``: :func:`copy_effect` as a table."""
    return pd.DataFrame([{
        "classifier": c["classifier"], "protocol": c["protocol"], "crop": c["crop"], "seeds": c["seeds"],
        "test_with_copy": c["n_copy"], "test_without_copy": c["n_no_copy"],
        "accuracy_copy": c["accuracy_copy"], **interval_columns("accuracy_copy_ci95", c["accuracy_copy_ci95"]),
        "accuracy_no_copy": c["accuracy_no_copy"],
        **interval_columns("accuracy_no_copy_ci95", c["accuracy_no_copy_ci95"]),
        "difference": c["difference"], **interval_columns("difference_ci95", c["difference_ci95"]),
        "difference_per_seed": ", ".join(f"{d:+.3f}" for d in c["difference_per_seed"]),
    } for c in summary.get("copy_effect", [])],
        columns=["classifier", "protocol", "crop", "seeds", "test_with_copy", "test_without_copy",
                 "accuracy_copy", *interval_columns("accuracy_copy_ci95", None),
                 "accuracy_no_copy", *interval_columns("accuracy_no_copy_ci95", None),
                 "difference", *interval_columns("difference_ci95", None), "difference_per_seed"])


def table(study: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``table_leakage`` (one row per classifier x protocol x crop),
    ``table_leakage_gap`` (paper and kaggle minus grouped) and the summary
    (also written to ``leakage_summary.json``)."""
    ws = study["workspace"]
    cells = _cells(study)
    table = pd.DataFrame([{
        "classifier": c["classifier"], "protocol": c["protocol"], "crop": c["crop"],
        "seeds": c["replicates"], "n_test": c["n_test"],
        "test_with_copy_in_train": c["test_with_copy_in_train"],
        "accuracy": c["accuracy"], **interval_columns("accuracy_ci95", c["accuracy_ci95"]),
        "accuracy_std": c["accuracy_std"], "f1": c["f1"], **interval_columns("f1_ci95", c["f1_ci95"]),
        "majority_rate": c["majority_rate"], "above_majority": c["learned"],
    } for c in cells])
    save_table(table, "table_leakage", ws,
               f"Leakage study (section 5.2): {CNN_LABEL} (and ResNet50, full page) batch 32, lr 1e-4 and a "
               "1-NN pixel probe per "
               f"split protocol, full page and (crop=True) header cropped; means over {study['n_seeds']} seeds, "
               "95 % CI from a two-stage bootstrap (seeds, then duplicate groups); test images with a copy "
               "in train (mean)")
    by_key = {(c["classifier"], c["protocol"], c["crop"]): c for c in cells}
    gaps = []
    rng_seed = 1
    for (classifier, protocol, crop), c in by_key.items():
        ref = by_key.get((classifier, "grouped", crop))
        if protocol == "grouped" or ref is None:
            continue
        rng_seed += 1
        other = bootstrap_sets(study["sets"][(classifier, "grouped", crop)], n_bootstrap=N_BOOTSTRAP,
                               seed=rng_seed, resample_sets=True)
        diff_acc = c["_boot"][:, 0] - other[:, 0]
        diff_f1 = c["_boot"][:, 3] - other[:, 3]
        ci = percentile_ci(diff_acc)
        gaps.append({
            "classifier": classifier, "crop": crop, "protocol": protocol, "versus": "grouped",
            "accuracy_gap": c["accuracy"] - ref["accuracy"], "accuracy_gap_ci95": ci,
            "f1_gap": c["f1"] - ref["f1"], "f1_gap_ci95": percentile_ci(diff_f1),
            "measurable": bool(ci[0] > 0 or ci[1] < 0),
            "learned": bool(c["learned"] or ref["learned"]),
            "accuracy": c["accuracy"], "accuracy_grouped": ref["accuracy"],
            "majority_rate": (c["majority_rate"] + ref["majority_rate"]) / 2,
        })
    gap_table = pd.DataFrame([_gap_row(g) for g in gaps])
    save_table(gap_table, "table_leakage_gap", ws,
               "Leakage gap: accuracy and macro F1 of each protocol minus the grouped protocol's "
               "(95 % CI: independent two-stage bootstraps, seeds then duplicate groups, of both "
               "protocols); 'learned': above the majority-class rate under either protocol")
    copies = {p: {"n_test": [c["n_test"] for c in v],
                  "test_with_copy_in_train": [c["test_copy_in_train"] for c in v],
                  "test_exact_copy_in_train": [c["test_exact_copy_in_train"] for c in v],
                  "groups_crossing": [c["groups_crossing"] for c in v]}
              for p, v in study["copies"].items()}
    epochs = study["replicates"]["epochs"].dropna()
    summary = {
        "dataset": ws.dataset, "profile": ws.profile, "seeds": study["n_seeds"],
        "cnn": CNN_LABEL, "cnn_epochs": int(epochs.iloc[0]) if len(epochs) else None,
        "cnn_weights": _weights_of(study["replicates"], CNN_LABEL),
        "weights": {c: _weights_of(study["replicates"], c)
                    for c in study["replicates"]["classifier"].unique() if c != PROBE_LABEL},
        "copies": copies,
        "cells": [{k: v for k, v in c.items() if k != "_boot"} for c in cells],
        "gaps": gaps,
        "copy_effect": copy_effect(study),
    }
    save_table(copy_effect_table(summary), "table_leakage_copies", ws,
               "Does the CNN exploit copies? Within the paper split, accuracy on the test images that "
               "have a copy (exact or near) in train vs on those that have none, mean over "
               f"{study['n_seeds']} seeds; 95 % CI from a two-stage bootstrap (seeds, then duplicate "
               "groups); the 1-NN probe, which matches pictures, for reference")
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
            f"{steps}, mean over {cell['replicates']} seeds), so it trained.")


def sentences(summary: dict) -> list[str]:
    """What the numbers show, in sentences computed from the summary."""
    out = []
    copies = summary["copies"]
    parts = []
    for protocol in ("paper", "grouped", "kaggle"):
        if protocol in copies:
            c = copies[protocol]
            parts.append(f"`{protocol}` {_pct(np.mean(c['test_with_copy_in_train']), np.mean(c['n_test']))}"
                         f" (exact byte copies: {np.mean(c['test_exact_copy_in_train']):.0f})")
    out.append(f"Test images with a copy (exact or near) in train, mean over {summary['seeds']} split "
               "seeds: " + ", ".join(parts) + ".")
    for g in summary["gaps"]:
        if g["protocol"] != "paper" or g["classifier"] == PROBE_LABEL:
            continue
        crop = "header cropped" if g["crop"] else "full page"
        ci = g["accuracy_gap_ci95"]
        head = (f"{g['classifier']} ({crop}): accuracy {g['accuracy']:.3f} under `paper` vs "
                f"{g['accuracy_grouped']:.3f} under `grouped`, gap {g['accuracy_gap']:+.3f} "
                f"(95 % CI over seeds and duplicate groups {ci[0]:+.3f} to {ci[1]:+.3f})")
        if not g["learned"]:
            epochs = summary.get("cnn_epochs")
            weights = summary.get("weights", {}).get(g["classifier"], summary.get("cnn_weights"))
            setting = ", ".join(x for x in (
                f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else "",
                {"none": "random initialisation", "imagenet": "ImageNet weights"}.get(weights, weights or ""))
                if x)
            out.append(f"{head}: the models did not score above the majority-class rate "
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
            out.append(text if text.endswith(".") else text + ".")
        elif g["measurable"]:
            out.append(f"{head}: measurable, but `grouped` scores higher, so the random split did not "
                       "inflate this number.")
        else:
            out.append(f"{head}: no measurable gap (the interval includes 0).")
    learned = {(g["classifier"], g["crop"]): g["learned"] for g in summary["gaps"] if g["protocol"] == "paper"}
    for c in summary.get("copy_effect", []):
        if c["classifier"] == PROBE_LABEL:
            continue
        crop = "header cropped" if c["crop"] else "full page"
        ci = c["difference_ci95"]
        head = (f"{c['classifier']} ({crop}), within the `paper` split: accuracy {c['accuracy_copy']:.3f} on the "
                f"{c['n_copy']:.0f} test images with a copy in train vs {c['accuracy_no_copy']:.3f} on the "
                f"{c['n_no_copy']:.0f} without (means over {c['seeds']} seeds), difference "
                f"{c['difference']:+.3f}")
        if ci is None:
            out.append(f"{head}: one of the two subsets is empty, so the CNN's use of copies cannot be measured.")
            continue
        head += (f" (95 % CI over seeds and duplicate groups {ci[0]:+.3f} to {ci[1]:+.3f}; per seed "
                 f"{', '.join(f'{d:+.3f}' for d in c['difference_per_seed'])})")
        if not learned.get((c["classifier"], c["crop"]), True):
            out.append(f"{head}: the model did not learn, so this says nothing about copies.")
        elif ci[0] > 0:
            out.append(f"{head}: the CNN is measurably more accurate on images it has seen a copy of, "
                       "so it exploits the copies (the two subsets are different ECGs, so part of the "
                       "difference may come from which ECGs the archive copied).")
        elif ci[1] < 0:
            out.append(f"{head}: the CNN is measurably less accurate on images with a copy in train, "
                       "so copies do not inflate its accuracy.")
        else:
            out.append(f"{head}: no measurable difference (the interval holds 0), so these runs do not "
                       "show that the CNN exploits the copies.")
    probe_gap = {g["crop"]: g for g in summary["gaps"]
                 if g["classifier"] == PROBE_LABEL and g["protocol"] == "paper"}
    for c in summary.get("copy_effect", []):
        if c["classifier"] != PROBE_LABEL or c["crop"] not in probe_gap or c["difference_ci95"] is None:
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
        out.append(f"{PROBE_LABEL} under `kaggle` (the archive's own folders) vs `grouped`: "
                   f"{g['accuracy_gap']:+.3f} (95 % CI {ci[0]:+.3f} to {ci[1]:+.3f}).")
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
                lo.append(c[metric] - c[f"{metric}_ci95"][0])
                hi.append(c[f"{metric}_ci95"][1] - c[metric])
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
        ax.set_ylabel(f"{label} (mean over seeds, 95 % CI)")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Fig. 14: leakage study, {CNN_LABEL} and ResNet50 (batch 32, lr 1e-4) and a 1-NN pixel probe per "
                 f"split protocol, {summary['seeds']} seeds\n{ws.label}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, "fig14_leakage", ws)


def cnn_learned(summary: dict) -> bool:
    return any(c["learned"] for c in summary["cells"] if c["classifier"] != PROBE_LABEL)

