"""Duplicate and leakage audit (beyond the paper; docs/design_notes.md, "The real
dataset").

Groups files that are the same ECG: exact duplicates share a sha256, near
duplicates (re-encoded copies) have perceptual hashes within a Hamming
threshold. A *group* is a connected component of either relation; the
``grouped`` split keeps each group in one subset. The audit answers, on any
archive: how many distinct images per class, how many copies, whether a group
crosses two labels, and how many files of the archive's own test folder have
a copy in its train folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import paths
from .config import CLASS_CODES
from .inventory import phash_bits, readable

#: Hamming distance (of the 256 bits of the grid-area phash, see
#: ``inventory.PHASH_METHOD``) up to which two images count as the same ECG.
#: Measured on the twin: re-encoded copies differ by at most 10 bits at full
#: page size, different recordings (even of one class) by 34 or more.
NEAR_THRESHOLD = 20


def near_duplicate_pairs(df: pd.DataFrame, threshold: int = NEAR_THRESHOLD) -> np.ndarray:
    """Index pairs (i < j) whose perceptual hashes differ in <= ``threshold`` bits.

    Hand-written (imagehash compares one pair at a time): the all-pairs Hamming
    distances are computed blockwise with numpy, O(n^2) bits but ~1 s for the
    4,000 files of the real archive.
    """
    bits = phash_bits(df["phash"]).astype(np.uint8)
    n = len(bits)
    pairs = []
    block = 512
    for start in range(0, n, block):
        a = bits[start:start + block]
        # Hamming distance = bits differing = |a| + |b| - 2 a.b
        dist = a.sum(1)[:, None] + bits.sum(1)[None, :] - 2 * (a.astype(np.int32) @ bits.T.astype(np.int32))
        i, j = np.nonzero(dist <= threshold)
        i = i + start
        keep = i < j
        pairs.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), int)


@dataclass
class Audit:
    files: pd.DataFrame  # readable rows + exact_group, group, group_size
    per_class: pd.DataFrame
    summary: dict


def assign_groups(df: pd.DataFrame, threshold: int = NEAR_THRESHOLD) -> pd.DataFrame:
    """Add ``exact_group`` (same sha256) and ``group`` (exact or near copies) ids.

    Ids are deterministic: groups are numbered by their first path in sorted order.
    """
    df = readable(df).sort_values("path", kind="stable").reset_index(drop=True)
    n = len(df)
    sha_codes = pd.factorize(df["sha256"])[0]
    # exact: link every file to the first file with the same sha256
    first_of = pd.Series(np.arange(n)).groupby(sha_codes).transform("min").to_numpy()
    near = near_duplicate_pairs(df, threshold)
    rows = np.concatenate([np.arange(n), near[:, 0]])
    cols = np.concatenate([first_of, near[:, 1]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    df["exact_group"] = _number_by_first(first_of, "x")
    df["group"] = _number_by_first(comp, "g")
    df["group_size"] = df.groupby("group")["path"].transform("size")
    return df


def _number_by_first(labels: np.ndarray, prefix: str) -> list[str]:
    order: dict[int, str] = {}
    out = []
    for lab in labels:
        if lab not in order:
            order[lab] = f"{prefix}{len(order) + 1:05d}"
        out.append(order[lab])
    return out


def run_audit(inventory: pd.DataFrame, threshold: int = NEAR_THRESHOLD) -> Audit:
    """The audit tables for one inventory (readable files of the chosen copy)."""
    files = assign_groups(inventory, threshold)
    n_unreadable = int((~inventory["readable"]).sum())
    rows = []
    for code in CLASS_CODES:
        sub = files[files["label"] == code]
        rows.append({
            "class": code,
            "files": len(sub),
            "distinct_exact": sub["sha256"].nunique(),
            "distinct_groups": sub["group"].nunique(),
            "exact_copies": len(sub) - sub["sha256"].nunique(),
            "near_only_copies": sub["sha256"].nunique() - sub["group"].nunique(),
        })
    per_class = pd.DataFrame(rows)
    total = per_class.drop(columns="class").sum()
    per_class = pd.concat([per_class, pd.DataFrame([{"class": "all", **total.to_dict()}])],
                          ignore_index=True)
    per_class["copy_fraction"] = (1 - per_class["distinct_groups"] / per_class["files"].clip(lower=1)).round(4)

    labels_per_group = files.groupby("group")["label"].nunique()
    cross_label = labels_per_group[labels_per_group > 1].index.tolist()

    summary = {
        "n_files_readable": int(len(files)),
        "n_unreadable": n_unreadable,
        "near_threshold_bits": threshold,
        "distinct_exact": int(files["sha256"].nunique()),
        "distinct_groups": int(files["group"].nunique()),
        "files_that_are_copies": int(len(files) - files["group"].nunique()),
        "copy_fraction": round(1 - files["group"].nunique() / max(len(files), 1), 4),
        "groups_crossing_labels": len(cross_label),
        "source_splits": sorted(s for s in files["source_split"].unique() if s),
    }
    summary.update(source_split_leakage(files))
    return Audit(files=files, per_class=per_class, summary=summary)


def source_split_leakage(files: pd.DataFrame) -> dict:
    """How many files of the archive's own test folder have a copy in its train
    folder (exact, and exact-or-near). Zero when the archive has no such folders."""
    train = files[files["source_split"] == "train"]
    test = files[files["source_split"] == "test"]
    if train.empty or test.empty:
        return {"source_test_files": int(len(test)), "source_test_with_exact_copy_in_train": 0,
                "source_test_with_copy_in_train": 0}
    return {
        "source_test_files": int(len(test)),
        "source_test_with_exact_copy_in_train": int(test["sha256"].isin(set(train["sha256"])).sum()),
        "source_test_with_copy_in_train": int(test["group"].isin(set(train["group"])).sum()),
    }


def audit_dir(dataset: str) -> Path:
    return paths.dataset_results(dataset) / "audit"


def write_audit(audit: Audit, dataset: str) -> Path:
    """``results/<dataset>/audit/``: per_class.csv/.md, groups.csv, summary.json."""
    out = audit_dir(dataset)
    paths.atomic_write_text(out / "per_class.csv", audit.per_class.to_csv(index=False, lineterminator="\n"))
    paths.atomic_write_text(out / "per_class.md", per_class_markdown(audit, dataset))
    cols = ["path", "label", "source_split", "sha256", "exact_group", "group", "group_size"]
    paths.atomic_write_text(out / "groups.csv", audit.files[cols].to_csv(index=False, lineterminator="\n"))
    paths.atomic_write_text(out / "summary.json", json.dumps(audit.summary, indent=2, sort_keys=True) + "\n")
    return out


def per_class_markdown(audit: Audit, dataset: str) -> str:
    s = audit.summary
    lines = [f"# Duplicate audit: dataset `{dataset}`", "",
             "| class | files | distinct (sha256) | distinct (exact or near) | copies | copy fraction |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in audit.per_class.to_dict("records"):
        lines.append(f"| {r['class']} | {r['files']} | {r['distinct_exact']} | {r['distinct_groups']} | "
                     f"{r['files'] - r['distinct_groups']} | {r['copy_fraction']:.1%} |")
    lines += ["", f"- unreadable files skipped: {s['n_unreadable']}",
              f"- duplicate groups that cross two labels: {s['groups_crossing_labels']}",
              f"- near-duplicate threshold: {s['near_threshold_bits']} of 256 phash bits"]
    if s["source_test_files"]:
        lines.append(f"- archive test folder: {s['source_test_files']} files, "
                     f"{s['source_test_with_copy_in_train']} with a copy in its train folder "
                     f"({s['source_test_with_exact_copy_in_train']} byte-identical)")
    return "\n".join(lines) + "\n"
