"""Inventory of a data tree: one row per discovered image file.

Per file: path, class, copy, source split, sha256, perceptual hash, width,
height, readable or not (and why). Unreadable images are kept in the
inventory with ``readable=False`` and the error, so nothing disappears
silently; every later stage uses only the readable rows and says how many it
dropped. Written to ``results/<dataset>/inventory.csv``; rows whose file size
and modification time did not change are reused from the previous inventory.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm  # text bar: tqdm.auto warns in kernels without ipywidgets

from ecgpaper import paths
from ecgpaper.data.discovery import Discovery
from ecgpaper.data.geometry import crop_box
from ecgpaper.data.synthetic import is_synthetic
from ecgpaper.errors import UserError

#: imagehash.phash with a 16 x 16 hash (256 bits) of the grid area only (the
#: header crop box): ECG report pages share their layout and text bands, so a
#: hash of the whole page, or the default 8 x 8 hash, is dominated by what all
#: pages have in common and brings different recordings within a few bits of
#: each other; the traces are what tells them apart. Re-encoding moves it little.
PHASH_SIZE = 16
PHASH_METHOD = "phash16-cropbox-v1"  # stored with the inventory; a change re-hashes
#: decode size used for hashing (JPEG draft mode: decoded in the DCT domain)
HASH_DECODE_SIZE = (512, 512)

COLUMNS = ["path", "label", "copy", "source_split", "class_folder", "sha256", "phash",
           "width", "height", "bytes", "mtime_ns", "readable", "error"]


def dataset_id(root: Path | str, name: str | None = None) -> str:
    """The dataset's name in output paths: ``synthetic...`` for a twin, the
    folder's name otherwise (``kaggle`` for the default download)."""
    root = Path(root)
    if name:
        base = paths.slug(name)
    else:
        base = paths.slug(root.resolve().name)
    if is_synthetic(root) and not paths.is_synthetic_dataset(base):
        base = f"{paths.SYNTHETIC_PREFIX}-{base}"
    return base


def inspect_file(path: str) -> dict:
    """sha256, perceptual hash and size of one image; errors are returned, not raised."""
    out = {"sha256": "", "phash": "", "width": 0, "height": 0, "readable": False, "error": ""}
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        out["sha256"] = hashlib.sha256(data).hexdigest()
        with Image.open(path) as img:
            out["width"], out["height"] = img.size
            img.draft("RGB", HASH_DECODE_SIZE)  # JPEG only; a no-op for PNG
            img = img.convert("RGB")  # forces a full decode: truncated files fail here
            out["phash"] = str(imagehash.phash(img.crop(crop_box(*img.size)), hash_size=PHASH_SIZE))
        out["readable"] = True
    except Exception as exc:  # any decoder error means "skip and report"
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def _inspect_many(paths_: list[str]) -> list[dict]:
    return [inspect_file(p) for p in paths_]


def build_inventory(discovery: Discovery, *, previous: pd.DataFrame | None = None,
                    workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Inventory every discovered file (in parallel), reusing unchanged rows."""
    root = discovery.root
    rows, todo = [], []
    prev = {}
    if previous is not None and len(previous):
        prev = {r["path"]: r for r in previous.to_dict("records")}
    for f in discovery.files:
        st = os.stat(root / f.path)
        row = {"path": f.path, "label": f.label, "copy": f.copy,
               "source_split": f.source_split, "class_folder": f.class_folder,
               "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        old = prev.get(f.path)
        if old is not None and int(old["bytes"]) == st.st_size and int(old["mtime_ns"]) == st.st_mtime_ns:
            row.update({k: old[k] for k in ("sha256", "phash", "width", "height", "readable", "error")})
        else:
            todo.append(len(rows))
        rows.append(row)
    if todo:
        workers = workers or os.cpu_count() or 1
        chunk = max(1, min(32, len(todo) // (workers * 4) or 1))
        batches = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
        bar = tqdm(total=len(todo), desc="inventory", unit="img", disable=not progress)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_inspect_many, [str(root / rows[i]["path"]) for i in b])
                       for b in batches]
            for b, fut in zip(batches, futures):
                for i, res in zip(b, fut.result()):
                    rows[i].update(res)
                bar.update(len(b))
        bar.close()
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["readable"] = df["readable"].astype(bool)
    df["error"] = df["error"].fillna("").astype(str)
    return df.sort_values("path", kind="stable").reset_index(drop=True)


def inventory_path(dataset: str) -> Path:
    return paths.dataset_results(dataset) / "inventory.csv"


def write_inventory(df: pd.DataFrame, dataset: str, discovery: Discovery) -> Path:
    """Write the CSV plus a JSON note of where it came from and what was skipped."""
    out = inventory_path(dataset)
    paths.atomic_write_text(out, df.to_csv(index=False, lineterminator="\n"))
    info = {
        "dataset": dataset,
        "phash_method": PHASH_METHOD,
        "data_root": str(discovery.root),
        "copy": discovery.copy,
        "copies": discovery.copies,
        "n_files": int(len(df)),
        "n_readable": int(df["readable"].sum()),
        "unreadable": df.loc[~df["readable"], ["path", "error"]].to_dict("records"),
        "skipped": [{"path": p, "reason": r} for p, r in discovery.skipped],
        "unmapped_folders": discovery.unmapped_folders,
    }
    paths.atomic_write_text(out.with_suffix(".json"), json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out


def previous_inventory(dataset: str) -> pd.DataFrame | None:
    """The last inventory of ``dataset`` if its hashes were made the current way."""
    p = inventory_path(dataset)
    info = p.with_suffix(".json")
    if not p.exists() or not info.exists():
        return None
    if json.loads(info.read_text()).get("phash_method") != PHASH_METHOD:
        return None
    return read_inventory(dataset)


def read_inventory(dataset: str) -> pd.DataFrame:
    p = inventory_path(dataset)
    if not p.exists():
        raise UserError(f"no inventory for dataset {dataset!r} at {p}; run "
                        "`python -m ecgpaper inventory` (with the same --data-root) first.")
    df = pd.read_csv(p, dtype={"source_split": str, "copy": str, "error": str, "phash": str,
                               "sha256": str}, keep_default_na=False)
    df["readable"] = df["readable"].astype(str).str.lower().isin(["true", "1"])
    return df


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """The rows every later stage uses."""
    return df[df["readable"]].reset_index(drop=True)


def phash_bits(hex_hashes: pd.Series | list[str]) -> np.ndarray:
    """Hex perceptual hashes -> (n, bits) bool array, for fast Hamming distances."""
    return np.array([imagehash.hex_to_hash(h).hash.ravel() for h in hex_hashes], dtype=bool)
