"""The run store: the one place that writes and reads finished runs on disk
(paper sections 3.5, 4 and 5.4 are all read back from it).

``results/<dataset>/<profile>/``
  ``runs/<run id>/``   one folder per run: config.json, metrics.json,
                       history.csv, predictions.csv, confusion.csv,
                       environment.json, model.keras (built under a temporary
                       name, :func:`start_run`, and renamed when complete by
                       :func:`write_run`; the trainer saves only the model file);
  ``runs.jsonl``       the registry, one JSON record per finished run, appended
                       atomically (a torn last line from a crash is ignored);
  ``experiments/<name>.json``  the run ids of a named experiment, in order.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ecgpaper import paths
from ecgpaper.config import CLASS_CODES
from ecgpaper.errors import UserError
from ecgpaper.metrics import labels_and_predictions
from ecgpaper.paths import Workspace

REGISTRY_NAME = "runs.jsonl"
MODEL_FILE = "model.keras"
#: the metrics a registry line keeps (the rest stay in metrics.json)
RECORD_METRICS = ("accuracy", "precision", "recall", "f1", "ci95", "epochs_run", "train_seconds",
                  "epoch_seconds_mean", "train_accuracy", "optimizer_steps", "paper_steps",
                  "peak_rss_mb", "gpu_peak_memory_mb")


@dataclass(frozen=True)
class Run:
    """A finished run, in either of its two shapes: a line of the registry
    (:func:`read_registry`: the config and a summary of the metrics) or its
    folder read back (:func:`load_run`: every metric). ``history`` (per-epoch,
    with wall time) and ``environment`` are read from the folder when first used."""
    run_id: str
    config: dict
    metrics: dict
    folder: Path
    manifest_sha256: str = ""
    finished: str = ""

    @classmethod
    def from_record(cls, ws: Workspace, record: dict) -> Run:
        return cls(record["run_id"], record.get("config", {}), record.get("metrics", {}),
                   run_folder(ws, record["run_id"]), record.get("manifest_sha256", ""),
                   record.get("finished", ""))

    @cached_property
    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.folder / "history.csv")

    @cached_property
    def environment(self) -> dict:
        return json.loads((self.folder / "environment.json").read_text())

    @cached_property
    def full_config(self) -> dict:
        """config.json: the config with the run's deviations, weights file and data."""
        return json.loads((self.folder / "config.json").read_text())

    @cached_property
    def full_metrics(self) -> dict:
        """metrics.json: every metric (the registry line holds a summary)."""
        return json.loads((self.folder / "metrics.json").read_text())

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def collapsed(self) -> bool:
        """The collapse detector flagged it (metrics.collapse_check): constant or
        uniform predictions, or a training set never fitted."""
        m = self.metrics
        return bool(m.get("collapsed", m.get("collapse", {}).get("collapsed", False)))

    @property
    def finished_in_folder(self) -> bool:
        """Its folder holds metrics.json: the run completed (a killed one is redone)."""
        return (self.folder / "metrics.json").exists()


def runs_dir(ws: Workspace) -> Path:
    """``results/<dataset>/<profile>/runs``: the folder of every run's folder."""
    return ws.results / "runs"


def run_folder(ws: Workspace, run_id: str) -> Path:
    return runs_dir(ws) / run_id


def registry_path(ws: Workspace) -> Path:
    return ws.results / REGISTRY_NAME


def read_registry(ws: Workspace) -> list[Run]:
    """Every complete record, as :class:`Run` (a torn last line from a crash is ignored)."""
    p = registry_path(ws)
    if not p.exists():
        return []
    records = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            records.append(Run.from_record(ws, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return records


def append_record(ws: Workspace, record: dict) -> None:
    """Append one JSON line atomically: one ``O_APPEND`` write under an exclusive
    ``lockf`` lock, then fsync. Several processes (runs.engine) append at once; the
    lock keeps the torn-line check below from seeing another writer's line half
    written (and NFS, where ``O_APPEND`` is not atomic, honours ``lockf``)."""
    import fcntl

    p = registry_path(ws)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(p, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            # a torn line left by a crash would glue onto ours: start on a fresh line
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def start_run(ws: Workspace, run_id: str) -> Path:
    """An empty temporary folder (``runs/.<run id>.partial``) to build a run in: a
    killed run leaves only it, and is redone (:func:`finished_run_ids`)."""
    work = runs_dir(ws) / f".{run_id}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def write_run(ws: Workspace, run_id: str, work: Path, *, config: dict, provenance: dict,
              metrics: dict, environment: dict, history: pd.DataFrame, predictions: pd.DataFrame,
              confusion: pd.DataFrame, manifest_sha256: str, executor: dict) -> dict:
    """Finish a run built in ``work`` (:func:`start_run`; the trainer has saved its
    model file there): write config.json (``config`` and ``provenance``: deviations,
    weights file, data), metrics.json, environment.json, history.csv,
    predictions.csv and confusion.csv, rename the folder to ``runs/<run id>`` and
    append the registry record (the config and :data:`RECORD_METRICS`), returned."""
    history.to_csv(work / "history.csv", index=False)
    predictions.to_csv(work / "predictions.csv", index=False)
    confusion.to_csv(work / "confusion.csv", index_label="true\\pred")
    files = {"config": {**config, **provenance, "run_id": run_id, "manifest_sha256": manifest_sha256},
             "metrics": metrics, "environment": environment}
    for name, content in files.items():
        (work / f"{name}.json").write_text(json.dumps(content, indent=2, sort_keys=True))
    final = run_folder(ws, run_id)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(work, final)
    record = {"run_id": run_id, "config": config, "manifest_sha256": manifest_sha256,
              "metrics": {k: metrics[k] for k in RECORD_METRICS} | {"collapsed": metrics["collapse"]["collapsed"]},
              "executor": executor, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    append_record(ws, record)
    return record


def finished_run_ids(ws: Workspace) -> set[str]:
    return {r.run_id for r in read_registry(ws) if r.finished_in_folder}


# --------------------------------------------------------------------------
# experiments
# --------------------------------------------------------------------------

def record_experiment(name: str, ws: Workspace, run_ids: list[str], **info) -> Path:
    """Write ``experiments/<name>.json`` (the run ids, in order) so that
    :func:`experiment_runs` and the figures find an experiment's runs."""
    out = experiment_file(name, ws)
    paths.atomic_write_text(out, json.dumps({"experiment": name, "dataset": ws.dataset, "profile": ws.profile,
                                             "run_ids": list(run_ids), **info}, indent=2) + "\n")
    return out


def experiment_file(name: str, ws: Workspace) -> Path:
    """``results/<dataset>/<profile>/experiments/<name>.json``: the run ids of an experiment."""
    return ws.results / "experiments" / f"{name}.json"


def load_run(ws: Workspace, run_id: str) -> Run:
    """A finished run from its folder: config, every metric, history and environment."""
    folder = run_folder(ws, run_id)
    if not (folder / "metrics.json").exists():
        raise UserError(f"run {run_id} has not finished (no {folder / 'metrics.json'})")
    config = json.loads((folder / "config.json").read_text())
    return Run(run_id, config, json.loads((folder / "metrics.json").read_text()), folder,
               config.get("manifest_sha256", ""))


def experiment_runs(name: str, ws: Workspace) -> list[Run]:
    """The finished runs of an experiment, in the experiment's order (see :func:`load_run`)."""
    f = experiment_file(name, ws)
    if not f.exists():
        raise UserError(f"experiment {name!r} has not been run for {ws.dataset}/{ws.profile}; run "
                        f"`python -m ecgpaper run {name} --profile {ws.profile}` first.")
    return [load_run(ws, i) for i in json.loads(f.read_text())["run_ids"]]


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


def load_predictions(ws: Workspace, run_id: str) -> pd.DataFrame:
    """A finished run's predictions.csv (path, true, pred, p_<class>, correct)."""
    f = run_folder(ws, run_id) / "predictions.csv"
    if not f.exists():
        raise UserError(f"run {run_id} has no predictions ({f}); rerun its experiment")
    return pd.read_csv(f, keep_default_na=False)


def probabilities(pred: pd.DataFrame) -> np.ndarray:
    return pred[[f"p_{c}" for c in CLASS_CODES]].to_numpy(float)
