"""Absolute paths from one place, so notebooks, scripts and the web service work
from any working directory (one ``paths`` module instead of relative paths
scattered through notebooks).

The project root is the repository that holds this package (``REPO``); set
``ECGPAPER_ROOT`` to put data, results, figures and models elsewhere (the
notebooks, docs and the reference run stay in ``REPO``).
Every generated path names the dataset (and, for experiment outputs, the
profile), so a number from the synthetic twin can never pass for the paper's.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("ECGPAPER_ROOT", REPO))
DATA = ROOT / "data"
RAW = DATA / "raw"
CACHE = DATA / "cache"
RESULTS = ROOT / "results"
FIGURES = ROOT / "figures"
MODELS = ROOT / "models"
BENCHMARKS = RESULTS / "benchmarks"

KAGGLE_RAW = RAW / "kaggle"


def twin_root(profile: str) -> Path:
    """Default folder of the synthetic twin made for ``profile``."""
    return RAW / f"synthetic-{profile}"


def slug(text: str) -> str:
    """A file-system-safe, lower-case name (for dataset ids derived from folders)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-._").lower()
    return s or "data"


def dataset_results(dataset: str) -> Path:
    """``results/<dataset>/``: inventory, audit and split manifests (profile-free)."""
    return RESULTS / dataset


def profile_results(dataset: str, profile: str) -> Path:
    """``results/<dataset>/<profile>/``: runs, tables, executed notebooks."""
    return RESULTS / dataset / profile


def profile_figures(dataset: str, profile: str) -> Path:
    """``figures/<dataset>/<profile>/``."""
    return FIGURES / dataset / profile


def cache_dir(dataset: str) -> Path:
    return CACHE / dataset


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (model files are hundreds of MB)."""
    import hashlib

    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
