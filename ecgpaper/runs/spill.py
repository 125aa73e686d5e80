"""A run's arrays on disk, for the process that trains it (runs.engine, runs.worker).

The parent writes the uint8 images and labels of the train/val/test subsets of
a :class:`~ecgpaper.runs.runconfig.RunData` once, under a digest of their
content, to ``data/cache/run-data/<digest>/`` (``.npy`` plus the rows and the
manifest's hash in ``meta.pkl``); each child maps the images read-only instead
of receiving a pickled copy, so N runs at once share one copy in the page cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np

from ecgpaper import paths
from ecgpaper.runs.runconfig import RunData

# --------------------------------------------------------------------------

SUBSETS = ("train", "val", "test")
SPILLED_FROM = "_spilled_from"  # the folder a RunData was memory-mapped from (load_spilled)


def data_digest(data: RunData) -> str:
    h = hashlib.sha256(data.manifest_sha.encode())
    h.update(json.dumps(data.extra, sort_keys=True, default=str).encode())
    for name in SUBSETS:
        x, y, _ = getattr(data, name)
        h.update(f"{name}{x.shape}{x.dtype}".encode())
        h.update(hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest())
        h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


def spill_data(data: RunData) -> Path:
    """Write ``data`` to ``data/cache/run-data/<digest>/`` once (atomic rename) and return the folder.
    Data that :func:`load_spilled` read is not hashed again: its folder is returned."""
    known = getattr(data, SPILLED_FROM, None)
    if known is not None and (Path(known) / "meta.pkl").exists():
        return Path(known)
    folder = paths.CACHE / "run-data" / data_digest(data)
    if (folder / "meta.pkl").exists():
        return folder
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    rows = {}
    for name in SUBSETS:
        x, y, r = getattr(data, name)
        np.save(tmp / f"{name}_x.npy", np.ascontiguousarray(x))
        np.save(tmp / f"{name}_y.npy", np.ascontiguousarray(y))
        rows[name] = r
    with open(tmp / "meta.pkl", "wb") as fh:
        pickle.dump({"rows": rows, "manifest_sha": data.manifest_sha, "extra": data.extra}, fh)
    try:
        os.replace(tmp, folder)
    except OSError:  # another scheduler spilled the same data first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_spilled(folder: Path) -> RunData:
    """The :class:`RunData` of :func:`spill_data`, its images memory-mapped."""
    folder = Path(folder)
    with open(folder / "meta.pkl", "rb") as fh:
        meta = pickle.load(fh)  # noqa: S301 (written by spill_data in this project's cache)
    subsets = {name: (np.load(folder / f"{name}_x.npy", mmap_mode="r"),
                      np.load(folder / f"{name}_y.npy"), meta["rows"][name]) for name in SUBSETS}
    data = RunData(**subsets, manifest_sha=meta["manifest_sha"], extra=meta["extra"])
    setattr(data, SPILLED_FROM, folder)  # spill_data(data) returns it without hashing the images again
    return data
