"""The run store: the one place that writes and reads finished runs on disk
(paper sections 3.5, 4 and 5.4 are all read back from it).

``results/<dataset>/<profile>/``
  ``runs/<run id>/``   one folder per run: config.json, metrics.json,
                       history.csv, predictions.csv, confusion.csv,
                       environment.json, model.keras (written by
                       :func:`ecgpaper.runs.training.train_run`, built under a
                       temporary name and renamed when complete);
  ``runs.jsonl``       the registry, one JSON record per finished run, appended
                       atomically (a torn last line from a crash is ignored);
  ``experiments/<name>.json``  the run ids of a named experiment, in order.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ecgpaper import paths
from ecgpaper.config import CLASS_CODES
from ecgpaper.errors import UserError
from ecgpaper.metrics import labels_and_predictions

REGISTRY_NAME = "runs.jsonl"


def runs_dir(dataset: str, profile: str) -> Path:
    """``results/<dataset>/<profile>/runs``: the folder of every run's folder."""
    return paths.profile_results(dataset, profile) / "runs"


def run_folder(dataset: str, profile: str, run_id: str) -> Path:
    return runs_dir(dataset, profile) / run_id


def registry_path(dataset: str, profile: str) -> Path:
    return paths.profile_results(dataset, profile) / REGISTRY_NAME


def read_registry(dataset: str, profile: str) -> list[dict]:
    """All complete records (a torn last line from a crash is ignored)."""
    p = registry_path(dataset, profile)
    if not p.exists():
        return []
    records = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_record(dataset: str, profile: str, record: dict) -> None:
    """Append one JSON line atomically (single O_APPEND write, then fsync)."""
    p = registry_path(dataset, profile)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # a torn line left by a crash would glue onto ours: start on a fresh line
        if os.fstat(fd).st_size and not p.read_bytes().endswith(b"\n"):
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def finished_run_ids(dataset: str, profile: str) -> set[str]:
    runs = runs_dir(dataset, profile)
    return {r["run_id"] for r in read_registry(dataset, profile)
            if (runs / r["run_id"] / "metrics.json").exists()}


# --------------------------------------------------------------------------
# experiments
# --------------------------------------------------------------------------

def record_experiment(name: str, dataset: str, profile: str, run_ids: list[str], **info) -> Path:
    """Write ``experiments/<name>.json`` (the run ids, in order) so that
    :func:`experiment_runs` and the figures find an experiment's runs."""
    out = experiment_file(name, dataset, profile)
    paths.atomic_write_text(out, json.dumps({"experiment": name, "dataset": dataset, "profile": profile,
                                             "run_ids": list(run_ids), **info}, indent=2) + "\n")
    return out


def experiment_file(name: str, dataset: str, profile: str) -> Path:
    """``results/<dataset>/<profile>/experiments/<name>.json``: the run ids of an experiment."""
    return paths.profile_results(dataset, profile) / "experiments" / f"{name}.json"


def load_run(dataset: str, profile: str, run_id: str) -> dict:
    """A finished run's config, full metrics and per-epoch history (a DataFrame)."""
    folder = run_folder(dataset, profile, run_id)
    if not (folder / "metrics.json").exists():
        raise UserError(f"run {run_id} has not finished (no {folder / 'metrics.json'})")
    return {"run_id": run_id, "folder": folder,
            "config": json.loads((folder / "config.json").read_text()),
            "metrics": json.loads((folder / "metrics.json").read_text()),
            "environment": json.loads((folder / "environment.json").read_text()),
            "history": pd.read_csv(folder / "history.csv")}


def experiment_runs(name: str, dataset: str, profile: str) -> list[dict]:
    """The finished runs of an experiment, in the experiment's order (see :func:`load_run`)."""
    f = experiment_file(name, dataset, profile)
    if not f.exists():
        raise UserError(f"experiment {name!r} has not been run for {dataset}/{profile}; run "
                        f"`python -m ecgpaper run {name} --profile {profile}` first.")
    return [load_run(dataset, profile, i) for i in json.loads(f.read_text())["run_ids"]]


# --------------------------------------------------------------------------
# predictions of finished runs
# --------------------------------------------------------------------------

def predictions_table(image_paths, y_true, proba, class_codes: Sequence[str] = CLASS_CODES) -> pd.DataFrame:
    """One row per test image: ``path``, ``true``, ``pred`` (class codes),
    ``p_<code>`` per class and ``correct`` (the run folder's predictions.csv)."""
    codes = list(class_codes)
    y, pred = labels_and_predictions(y_true, proba, len(codes))
    p = np.asarray(proba, dtype=float)
    table = pd.DataFrame({"path": [str(x) for x in image_paths],
                          "true": [codes[i] for i in y],
                          "pred": [codes[i] for i in pred]})
    for k, code in enumerate(codes):
        table[f"p_{code}"] = p[:, k]
    table["correct"] = y == pred
    return table


def load_predictions(dataset: str, profile: str, run_id: str) -> pd.DataFrame:
    """A finished run's predictions.csv (path, true, pred, p_<class>, correct)."""
    f = run_folder(dataset, profile, run_id) / "predictions.csv"
    if not f.exists():
        raise UserError(f"run {run_id} has no predictions ({f}); rerun its experiment")
    return pd.read_csv(f, keep_default_na=False)


def probabilities(pred: pd.DataFrame) -> np.ndarray:
    return pred[[f"p_{c}" for c in CLASS_CODES]].to_numpy(float)
