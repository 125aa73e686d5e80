"""The data stage end to end: pick the data, inventory, audit, split, cache.

One call, :func:`prepare_data`, used by the command line (``python -m ecgpaper
prepare``), ``run_all.sh`` and the notebooks. The data root is, in order: the
one given (``--data-root``), the Kaggle download in ``data/raw/kaggle`` if it
is there, or the synthetic twin of the profile (made on first use). Whatever
it is, the same discovery, audit and split code reads it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ecgpaper import paths
from ecgpaper.config import SPLIT_PROTOCOLS, get_profile
from ecgpaper.data.audit import NEAR_THRESHOLD, Audit, run_audit, write_audit
from ecgpaper.data.discovery import Discovery, discover, parse_class_map
from ecgpaper.data.download import download_kaggle, is_downloaded, kaggle_credentials_present
from ecgpaper.data.inventory import build_inventory, dataset_id, inventory_path, previous_inventory, write_inventory
from ecgpaper.data.preprocess import ImageCache, PreprocessSettings, build_cache
from ecgpaper.data.splits import make_manifest, write_manifest
from ecgpaper.data.synthetic import synthesize
from ecgpaper.errors import UserError


def resolve_data_root(data_root: str | Path | None, profile: str) -> tuple[Path, str]:
    """(root, where it came from: "given" | "kaggle" | "synthetic")."""
    if data_root:
        return Path(data_root).expanduser().resolve(), "given"
    if is_downloaded(paths.KAGGLE_RAW):
        return paths.KAGGLE_RAW, "kaggle"
    return paths.twin_root(profile), "synthetic"


def ensure_twin(profile: str, root: Path | None = None, *, seed: int = 0,
                workers: int | None = None, progress: bool = True, **overrides) -> Path:
    """Make the synthetic twin sized for ``profile`` (a no-op if it exists)."""
    prof = get_profile(profile)
    root = Path(root) if root else paths.twin_root(profile)
    params = dict(distinct_per_class=prof.synth_distinct_per_class,
                  page_size=tuple(prof.synth_page_size), seed=seed)
    params.update(overrides)
    synthesize(root, workers=workers, progress=progress, **params)
    return root


def obtain_data(data_root: str | Path | None, profile: str, *, log=print) -> tuple[Path, str]:
    """Notebook 00: the data root to use, fetched or made if needed.

    A given root is used as is; else the Kaggle download (made now if Kaggle
    credentials are configured); else the profile's synthetic twin (made now).
    """
    root, source = resolve_data_root(data_root, profile)
    if source == "synthetic" and kaggle_credentials_present():
        try:
            return download_kaggle(log=log), "kaggle"
        except UserError as exc:
            log(f"Kaggle download failed, falling back to the synthetic twin:\n{exc}")
    if source == "synthetic":
        log(f"Using the SYNTHETIC twin in {root} (numbers from it are not the paper's).")
        ensure_twin(profile, root)
    return root, source


def inventory_fingerprint(inventory: pd.DataFrame) -> str:
    """sha256 over (path, label, sha256) of the readable rows: what a manifest depends on."""
    h = hashlib.sha256()
    for r in inventory[inventory["readable"]].sort_values("path")[["path", "label", "sha256"]].itertuples(index=False):
        h.update(f"{r.path}\t{r.label}\t{r.sha256}\n".encode())
    return h.hexdigest()


@dataclass
class PreparedData:
    root: Path
    source: str
    dataset: str
    discovery: Discovery
    inventory: pd.DataFrame
    audit: Audit
    manifests: dict[str, Path] = field(default_factory=dict)
    cache: ImageCache | None = None
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def is_synthetic(self) -> bool:
        return paths.is_synthetic_dataset(self.dataset)


def load_discovery_and_inventory(root: Path, *, dataset_name=None, copy=None, class_map=None,
                                 workers=None, progress=True) -> tuple[str, Discovery, pd.DataFrame]:
    """Discover the files and (re)build the inventory, reusing unchanged rows."""
    disc = discover(root, copy=copy, class_map=parse_class_map(class_map))
    dataset = dataset_id(root, dataset_name)
    previous = previous_inventory(dataset)
    inv = build_inventory(disc, previous=previous, workers=workers, progress=progress)
    write_inventory(inv, dataset, disc)
    return dataset, disc, inv


def prepare_data(data_root: str | Path | None = None, *, profile: str = "quick",
                 dataset_name: str | None = None, copy: str | None = None,
                 class_map=None, seed: int = 0, protocols=SPLIT_PROTOCOLS,
                 image_size: int | None = None, fit: str = "resize", crop: bool = False,
                 near_threshold: int = NEAR_THRESHOLD, build_image_cache: bool = True,
                 workers: int | None = None, progress: bool = True, log=print) -> PreparedData:
    """Run the whole data stage and say where every output went."""
    root, source = resolve_data_root(data_root, profile)
    if source == "synthetic":
        log(f"No Kaggle data in {paths.KAGGLE_RAW}: using the SYNTHETIC twin in {root} "
            "(its numbers are not the paper's; see README 'Data').")
        ensure_twin(profile, root, seed=0, workers=workers, progress=progress)
    dataset, disc, inv = load_discovery_and_inventory(
        root, dataset_name=dataset_name, copy=copy, class_map=class_map,
        workers=workers, progress=progress)
    log(disc.describe())
    bad = inv[~inv["readable"]]
    if len(bad):
        log(f"skipped {len(bad)} unreadable image(s), listed in {inventory_path(dataset)}: "
            + "; ".join(f"{p} ({e})" for p, e in zip(bad['path'][:3], bad['error'][:3])))
    audit = run_audit(inv, near_threshold)
    out = {"inventory": inventory_path(dataset), "audit": write_audit(audit, dataset)}
    prepared = PreparedData(root, source, dataset, disc, inv, audit, outputs=out)
    fingerprint = inventory_fingerprint(inv)
    for protocol in protocols:
        try:
            man = make_manifest(audit.files, protocol, seed)
        except UserError as exc:
            if protocol == "kaggle" and len(protocols) > 1:
                log(f"protocol kaggle skipped: {exc}")
                continue
            raise
        prepared.manifests[protocol] = write_manifest(man, dataset, protocol, seed, fingerprint)
    if build_image_cache:
        size = image_size or get_profile(profile).image_size
        prepared.cache = build_cache(inv, root, dataset, PreprocessSettings(size, fit, crop),
                                     workers=workers, progress=progress)
        out["cache"] = prepared.cache.array_path
    return prepared
