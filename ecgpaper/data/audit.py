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

from ecgpaper import paths
from ecgpaper.config import CLASS_CODES
from ecgpaper.data.inventory import phash_bits, readable
from ecgpaper.outputs import save_figure, save_table, use_style
from ecgpaper.paths import Workspace

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


# --------------------------------------------------------------------------
# the threshold, checkable on any archive
# --------------------------------------------------------------------------

#: distance bins of ``table_audit_phash_distances`` (Hamming distance of 256 bits)
DISTANCE_BINS = (0, 1, 6, 11, 16, 21, 26, 31, 36, 41, 51, 61, 81, 257)


def phash_distance_counts(files: pd.DataFrame) -> pd.DataFrame:
    """Pairs of distinct contents (one file per sha256) by the Hamming distance of
    their phashes, 0..256: ``same_class`` and ``different_class`` pair counts.
    Blockwise like :func:`near_duplicate_pairs` (all pairs, ~8 M for the real archive)."""
    distinct = files.drop_duplicates("sha256").reset_index(drop=True)
    bits = phash_bits(distinct["phash"]).astype(np.int32)
    labels = pd.factorize(distinct["label"])[0]
    n, width = len(bits), bits.shape[1] if len(bits) else 256
    same = np.zeros(width + 1, np.int64)
    diff = np.zeros(width + 1, np.int64)
    ones = bits.sum(1)
    for start in range(0, n, 512):
        a = bits[start:start + 512]
        dist = ones[start:start + 512, None] + ones[None, :] - 2 * (a @ bits.T)
        i, j = np.nonzero(np.arange(start, start + len(a))[:, None] < np.arange(n)[None, :])
        d = dist[i, j]
        same_label = labels[start + i] == labels[j]
        same += np.bincount(d[same_label], minlength=width + 1)
        diff += np.bincount(d[~same_label], minlength=width + 1)
    return pd.DataFrame({"distance": np.arange(width + 1), "same_class": same, "different_class": diff})


def threshold_check(audit: Audit) -> dict:
    """What a user of the archive needs to check ``near_threshold_bits``: the
    binned phash distance histogram (:func:`phash_distance_counts`), the pairs
    just above and below the threshold, the largest group and every group that
    crosses labels (``groups``: a table of those, largest group first)."""
    files, threshold = audit.files, audit.summary["near_threshold_bits"]
    counts = phash_distance_counts(files)
    bins = []
    for lo, hi in zip(DISTANCE_BINS[:-1], DISTANCE_BINS[1:]):
        sub = counts[(counts["distance"] >= lo) & (counts["distance"] < hi)]
        bins.append({"distance": f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}",
                     "pairs_same_class": int(sub["same_class"].sum()),
                     "pairs_different_class": int(sub["different_class"].sum()),
                     "same_ecg_at_threshold": "yes" if hi - 1 <= threshold else
                     ("partly" if lo <= threshold else "no")})
    sizes = files.groupby("group").agg(files=("path", "size"), distinct_contents=("sha256", "nunique"),
                                       classes=("label", lambda s: ", ".join(sorted(set(s)))),
                                       n_classes=("label", "nunique"), example=("path", "first"))
    sizes = sizes.sort_values(["files", "example"], ascending=[False, True])
    largest = sizes.index[0] if len(sizes) else None
    shown = sizes[(sizes.index == largest) | (sizes["n_classes"] > 1)]
    groups = shown.reset_index().assign(
        why=lambda d: np.where(d["group"] == largest, "largest group", "") + np.where(
            d["n_classes"] > 1, np.where(d["group"] == largest, "; crosses labels", "crosses labels"), ""))
    above = counts[counts["distance"] > threshold]
    first_above = above.loc[(above["same_class"] + above["different_class"]) > 0, "distance"]
    return {
        "threshold": threshold, "counts": counts, "bins": pd.DataFrame(bins),
        "pairs_at_or_below": int(counts.loc[counts["distance"] <= threshold, ["same_class", "different_class"]]
                                 .to_numpy().sum()),
        "nearest_above": int(first_above.iloc[0]) if len(first_above) else None,
        "largest_group_files": int(sizes["files"].iloc[0]) if len(sizes) else 0,
        "groups_crossing_labels": int((sizes["n_classes"] > 1).sum()),
        "groups": groups[["group", "why", "files", "distinct_contents", "classes", "example"]],
    }


def write_threshold_check(audit: Audit, ws: Workspace) -> dict:
    """``table_audit_phash_distances``, ``table_audit_groups`` and
    ``fig_audit_phash_distances`` (stable names, captions name the dataset and
    profile): the near-duplicate threshold shown so it can be checked."""
    import matplotlib.pyplot as plt

    check = threshold_check(audit)
    t = check["threshold"]
    save_table(check["bins"], "table_audit_phash_distances", ws,
               f"Duplicate audit: pairs of distinct files by the Hamming distance of their 256-bit grid "
               f"phash, same class vs different class; files within {t} bits count as the same ECG "
               f"(nearest pair above the threshold: {check['nearest_above']} bits)")
    save_table(check["groups"], "table_audit_groups", ws,
               f"Duplicate audit: the largest group of copies ({check['largest_group_files']} files) and "
               f"the {check['groups_crossing_labels']} groups whose copies carry different labels")
    use_style()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    c = check["counts"]
    ax.bar(c["distance"], c["different_class"], width=1.0, lw=0, color="0.6", label="different class")
    ax.bar(c["distance"], c["same_class"], width=1.0, lw=0, bottom=c["different_class"], color="tab:blue",
           label="same class")
    ax.axvline(t + 0.5, color="tab:red", ls="--", lw=1, label=f"threshold ({t} bits)")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("Hamming distance of the grid phash (of 256 bits)")
    ax.set_ylabel("pairs of distinct files")
    ax.set_title(f"Near-duplicate threshold check: largest group {check['largest_group_files']} files, "
                 f"{check['groups_crossing_labels']} groups cross labels\n{ws.label}",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    check["figure"] = save_figure(fig, "fig_audit_phash_distances", ws)
    return check
