"""Train / validation / test manifests (paper section 3.1: 70 / 15 / 15).

Three protocols, all seeded and byte-for-byte reproducible:

- ``paper``: stratified random split over all files, as the paper describes.
  Copies of the same ECG can land in train and test; the manifest counts them.
- ``grouped``: same ratios, but every duplicate group (exact or near, from the
  audit) stays in one subset, stratified as well as the groups allow
  (scikit-learn's ``StratifiedGroupKFold``).
- ``kaggle``: the archive's own train/test folders; validation carved from
  train, group-aware so early stopping is not fooled by copies.

A manifest is a CSV (path, label, subset, group, copy_in_train) sorted by
path, plus a JSON summary with the counts, the number of validation and test
files that have a copy in train, and the hash of the inventory it came from.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from ecgpaper import paths
from ecgpaper.config import CLASS_CODES, SPLIT_FRACTIONS, SPLIT_PROTOCOLS
from ecgpaper.errors import UserError

MANIFEST_COLUMNS = ["path", "label", "subset", "group", "copy_in_train"]


def _paper_split(files: pd.DataFrame, seed: int) -> pd.Series:
    idx = np.arange(len(files))
    y = files["label"].to_numpy()
    test_frac = SPLIT_FRACTIONS["test"]
    val_frac = SPLIT_FRACTIONS["val"] / (1 - test_frac)
    rest, test = train_test_split(idx, test_size=test_frac, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_frac, stratify=y[rest], random_state=seed)
    subset = np.empty(len(files), dtype=object)
    subset[train], subset[val], subset[test] = "train", "val", "test"
    return pd.Series(subset, index=files.index)


def _group_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> tuple[np.ndarray, int]:
    """Fold number of each sample, from StratifiedGroupKFold (groups never split)."""
    n_splits = int(min(n_splits, len(np.unique(groups))))
    if n_splits < 2:
        raise UserError("too few distinct images to split by group; synthesise or download more data")
    fold = np.empty(len(y), dtype=int)
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        for k, (_, held) in enumerate(sgkf.split(np.zeros(len(y)), y, groups)):
            fold[held] = k
    except ValueError as exc:  # e.g. a class with fewer distinct images than folds
        raise UserError(f"cannot split {len(y)} files into {n_splits} group-aware folds ({exc}); "
                        "use more data (synthesise a larger twin) or the paper protocol") from None
    return fold, n_splits


def _grouped_split(files: pd.DataFrame, seed: int) -> pd.Series:
    # 20 folds of 5 %: 3 for test, 3 for validation, 14 for train (70/15/15).
    y, groups = files["label"].to_numpy(), files["group"].to_numpy()
    fold, k = _group_folds(y, groups, 20, seed)
    n_test = max(1, round(SPLIT_FRACTIONS["test"] * k))
    n_val = max(1, round(SPLIT_FRACTIONS["val"] * k))
    subset = np.where(fold < n_test, "test", np.where(fold < n_test + n_val, "val", "train"))
    return pd.Series(subset.astype(object), index=files.index)


def _kaggle_split(files: pd.DataFrame, seed: int) -> pd.Series:
    splits = set(files["source_split"])
    if not {"train", "test"} <= splits:
        raise UserError(
            "protocol 'kaggle' needs the archive's own train/ and test/ folders, but the "
            f"chosen copy has source splits {sorted(s for s in splits if s) or 'none'}; "
            "use --protocol paper or grouped, or choose a copy with train/test folders (--copy).")
    subset = pd.Series("", index=files.index, dtype=object)
    subset[files["source_split"] == "test"] = "test"
    subset[files["source_split"] == "val"] = "val"
    train = files[files["source_split"] == "train"]
    if "val" not in splits:
        # carve validation (15 % of the whole) out of train, keeping groups whole
        share = SPLIT_FRACTIONS["val"] / (SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["val"])
        fold, _ = _group_folds(train["label"].to_numpy(), train["group"].to_numpy(),
                               max(2, round(1 / share)), seed)
        subset[train.index] = np.where(fold == 0, "val", "train")
    else:
        subset[train.index] = "train"
    return subset


_SPLITTERS = {"paper": _paper_split, "grouped": _grouped_split, "kaggle": _kaggle_split}


def make_manifest(groups: pd.DataFrame, protocol: str, seed: int = 0) -> pd.DataFrame:
    """Split the audited files (``audit.Audit.files``) by ``protocol``."""
    if protocol not in _SPLITTERS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(SPLIT_PROTOCOLS)}")
    files = groups.sort_values("path", kind="stable").reset_index(drop=True)
    missing = [c for c in CLASS_CODES if not (files["label"] == c).any()]
    if missing:
        raise UserError(f"classes {missing} have no readable images; check the data root "
                        "and the class mapping (--class-map)")
    subset = _SPLITTERS[protocol](files, seed)
    man = pd.DataFrame({"path": files["path"], "label": files["label"], "subset": subset,
                        "group": files["group"]})
    train_groups = set(man.loc[man["subset"] == "train", "group"])
    man["copy_in_train"] = (man["subset"] != "train") & man["group"].isin(train_groups)
    return man[MANIFEST_COLUMNS]


def cv_fold_name(folds: int, fold: int) -> str:
    """The name of fold ``fold`` of a ``folds``-fold cross-validation (``RunConfig.cv_fold``)."""
    return f"cv{folds}-fold{fold}"


def make_cv_manifests(groups: pd.DataFrame, protocol: str, folds: int, seed: int) -> list[pd.DataFrame]:
    """``folds`` manifests of a cross-validation (the leakage study): fold ``k``'s
    test subset is the ``k``-th of ``folds`` disjoint test folds that cover every
    file once; validation (15 / 85 of the rest, as in the 70/15/15 split) is
    carved from the other folds, the remainder is train.

    ``grouped``: the folds are scikit-learn's ``StratifiedGroupKFold`` (every
    duplicate group in one fold, stratified by class as far as the groups allow),
    and validation is carved group-aware too, so no test image has a copy in its
    fold's train or validation. ``paper``: the paper's random image-level split
    in folds, ``StratifiedKFold`` over images (copies land on both sides), and a
    stratified random validation carve."""
    if protocol not in ("paper", "grouped"):
        raise UserError(f"cross-validation folds exist for the paper and grouped protocols, not {protocol!r}")
    files = groups.sort_values("path", kind="stable").reset_index(drop=True)
    y, g = files["label"].to_numpy(), files["group"].to_numpy()
    if protocol == "grouped":
        test_fold, folds = _group_folds(y, g, folds, seed)
    else:
        test_fold = np.empty(len(y), dtype=int)
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (_, held) in enumerate(skf.split(np.zeros(len(y)), y)):
            test_fold[held] = k
    share = SPLIT_FRACTIONS["val"] / (SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["val"])
    out = []
    for k in range(folds):
        rest = np.flatnonzero(test_fold != k)
        subset = np.full(len(y), "test", dtype=object)
        if protocol == "grouped":
            carve, _ = _group_folds(y[rest], g[rest], max(2, round(1 / share)), seed + 1000 + k)
            subset[rest] = np.where(carve == 0, "val", "train")
        else:
            train, val = train_test_split(rest, test_size=share, stratify=y[rest], random_state=seed + 1000 + k)
            subset[train], subset[val] = "train", "val"
        man = pd.DataFrame({"path": files["path"], "label": files["label"], "subset": subset, "group": g})
        train_groups = set(man.loc[man["subset"] == "train", "group"])
        man["copy_in_train"] = (man["subset"] != "train") & man["group"].isin(train_groups)
        out.append(man[MANIFEST_COLUMNS])
    return out


def manifest_summary(man: pd.DataFrame, protocol: str, seed: int, inventory_sha: str) -> dict:
    counts = (man.groupby(["subset", "label"]).size().unstack(fill_value=0)
              .reindex(index=["train", "val", "test"], columns=list(CLASS_CODES), fill_value=0))
    return {
        "protocol": protocol,
        "seed": seed,
        "fractions_requested": SPLIT_FRACTIONS,
        "counts": {s: {c: int(v) for c, v in row.items()} for s, row in counts.iterrows()},
        "totals": {s: int(counts.loc[s].sum()) for s in counts.index},
        "test_with_copy_in_train": int(man.loc[man["subset"] == "test", "copy_in_train"].sum()),
        "val_with_copy_in_train": int(man.loc[man["subset"] == "val", "copy_in_train"].sum()),
        "groups_in_more_than_one_subset": int((man.groupby("group")["subset"].nunique() > 1).sum()),
        "inventory_sha256": inventory_sha,
    }


def manifest_path(dataset: str, protocol: str, seed: int = 0, cv_fold: str = "") -> Path:
    """``splits/<protocol>_seed<seed>.csv``; a cross-validation fold (``cv_fold``, e.g.
    ``cv2-fold0``): ``splits/<protocol>_seed<seed>_<cv_fold>.csv``."""
    name = f"{protocol}_seed{seed}" + (f"_{cv_fold}" if cv_fold else "")
    return paths.dataset_results(dataset) / "splits" / f"{name}.csv"


def write_manifest(man: pd.DataFrame, dataset: str, protocol: str, seed: int,
                   inventory_sha: str, cv_fold: str = "") -> Path:
    out = manifest_path(dataset, protocol, seed, cv_fold)
    paths.atomic_write_text(out, man.to_csv(index=False, lineterminator="\n"))
    summary = manifest_summary(man, protocol, seed, inventory_sha)
    paths.atomic_write_text(out.with_suffix(".json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return out


def read_manifest(dataset: str, protocol: str, seed: int = 0, cv_fold: str = "") -> pd.DataFrame:
    p = manifest_path(dataset, protocol, seed, cv_fold)
    if not p.exists():
        raise UserError(f"no {protocol} manifest for dataset {dataset!r} (seed {seed}{', ' + cv_fold if cv_fold else ''}) at {p}; "
                        "run `python -m ecgpaper split` first.")
    man = pd.read_csv(p, keep_default_na=False)
    man["copy_in_train"] = man["copy_in_train"].astype(str).str.lower().eq("true")
    return man
