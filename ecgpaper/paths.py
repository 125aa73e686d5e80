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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: the numbered notebooks (part of the code: under the repository, not the project root)
NOTEBOOKS = REPO / "notebooks"
ROOT = Path(os.environ.get("ECGPAPER_ROOT", REPO))
DATA = ROOT / "data"
RAW = DATA / "raw"
CACHE = DATA / "cache"
RESULTS = ROOT / "results"
FIGURES = ROOT / "figures"
MODELS = ROOT / "models"
BENCHMARKS = RESULTS / "benchmarks"

KAGGLE_RAW = RAW / "kaggle"

#: every dataset id of the offline twin starts with it (``data.inventory.dataset_id``)
SYNTHETIC_PREFIX = "synthetic"


def twin_root(profile: str) -> Path:
    """Default folder of the synthetic twin made for ``profile``."""
    return RAW / f"{SYNTHETIC_PREFIX}-{profile}"


def is_synthetic_dataset(dataset: str) -> bool:
    """True for a dataset id of the offline twin (numbers from it are not the paper's)."""
    return dataset.startswith(SYNTHETIC_PREFIX)


def slug(text: str) -> str:
    """A file-system-safe, lower-case name (for dataset ids derived from folders)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-._").lower()
    return s or "data"


def dataset_results(dataset: str) -> Path:
    """``results/<dataset>/``: inventory, audit and split manifests (profile-free)."""
    return RESULTS / dataset


@dataclass(frozen=True)
class Workspace:
    """One dataset x profile: where its runs, tables, figures and report live, and
    how every output names the data (``label``), so a number from the synthetic
    twin can never pass for the paper's. The value every stage passes around
    instead of a ``(dataset, profile)`` pair."""
    dataset: str
    profile: str

    @property
    def synthetic(self) -> bool:
        return is_synthetic_dataset(self.dataset)

    @property
    def label(self) -> str:
        """'dataset X, profile Y', with a SYNTHETIC warning for the twin: every caption and title."""
        warn = " (SYNTHETIC twin, not the paper's data)" if self.synthetic else ""
        return f"dataset {self.dataset}{warn}, profile {self.profile}"

    @property
    def results(self) -> Path:
        """``results/<dataset>/<profile>/``: runs, tables, REPORT.md, executed notebooks."""
        return RESULTS / self.dataset / self.profile

    @property
    def figures(self) -> Path:
        """``figures/<dataset>/<profile>/``."""
        return FIGURES / self.dataset / self.profile

    @property
    def dataset_results(self) -> Path:
        return dataset_results(self.dataset)

    def table(self, name: str) -> Path:
        """A table's CSV, ``results/<dataset>/<profile>/<name>.csv``."""
        return self.results / f"{name}.csv"


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
