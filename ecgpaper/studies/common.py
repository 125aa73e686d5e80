"""Beyond the paper (sections 5.2 and 5.5): the shared pieces of notebook 06.

The paper's limitations section (5.2) lists what it did not do: no
interpretability, no robustness to real-world distortions, two architectures,
one data source; section 5.5 proposes lighter models and ensembles. And its
98 % may be inflated, because the archive holds many byte-identical copies
that a random 70/15/15 split puts on both sides. One module per study, each
with the verbs ``run``, ``table``, ``figure`` and ``sentences`` (REPORT.md,
assembled by :mod:`ecgpaper.report`, reads the tables and the sentences):

- :mod:`ecgpaper.studies.leakage` (item 1): the paper's VGG16 setting under the
  ``paper``, ``grouped`` and ``kaggle`` protocols, with and without the header
  crop, plus the model-free probe of :mod:`ecgpaper.studies.probe`;
- :mod:`ecgpaper.studies.interpretability` (item 2): Grad-CAM grids and the share of
  heat on the header band;
- :mod:`ecgpaper.studies.robustness` (item 3): accuracy under graded corruptions;
- :mod:`ecgpaper.studies.lightweight` (items 4, 6): MobileNetV2 and EfficientNetB0
  beside the paper's models, latency, size, and a soft-voting ensemble;
- :mod:`ecgpaper.studies.significance` (item 5): every headline number with an
  interval over duplicate groups and the verdict of :mod:`ecgpaper.studies.verdicts`,
  and VGG16 vs ResNet50 paired over duplicate groups;
- :mod:`ecgpaper.studies.calibration` (issue 21, item 4): per-class sensitivity,
  specificity and AUROC with group intervals, calibration before and after
  temperature scaling, on the ``grouped`` runs.

This module holds what they share: data prepared once per split seed and crop
(:class:`DataSource`; runs are trained with the registry's resume logic and
the same run ids as ``experiments.run_experiment``, so a finished ``grid`` or
``baseline`` run of the same setting is reused, never retrained), the
duplicate group of each test image, and the names of every output.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ecgpaper.data.prepare import prepare_data
from ecgpaper.data.splits import cv_fold_name, make_cv_manifests, manifest_path, read_manifest, write_manifest
from ecgpaper.paths import Workspace
from ecgpaper.runs.experiments import load_run_data
from ecgpaper.runs.runconfig import RunData

# --------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------

class DataSource:
    """Prepared data per (split seed, crop), made once (``data.prepare_data``
    reuses inventory and image caches), and the subset arrays of a protocol,
    read from the memory-mapped cache on each call (not kept: at 224 px one
    split's arrays are hundreds of MB)."""

    def __init__(self, profile: str, data_root=None, *, fit: str = "resize", log=print,
                 verbose: int = 0):
        self.profile, self.data_root, self.fit, self.log, self.verbose = profile, data_root, fit, log, verbose
        self._prepared: dict = {}

    def prepared(self, split_seed: int = 0, crop: bool = False):
        key = (split_seed, crop)
        if key not in self._prepared:
            quiet = (lambda *a, **k: None) if self._prepared else self.log
            self._prepared[key] = prepare_data(
                self.data_root, profile=self.profile, seed=split_seed, fit=self.fit, crop=crop,
                progress=self.verbose > 0, log=quiet)  # at the profile's image size
        return self._prepared[key]

    @property
    def workspace(self) -> Workspace:
        """Where this data's runs, tables and figures are filed (dataset x profile)."""
        return Workspace(self.dataset, self.profile)

    @property
    def dataset(self) -> str:
        return next(iter(self._prepared.values())).dataset if self._prepared else self.prepared().dataset

    def has_protocol(self, protocol: str, split_seed: int = 0) -> bool:
        return protocol in self.prepared(split_seed).manifests

    def run_data(self, protocol: str, split_seed: int = 0, crop: bool = False, cv_fold: str = "") -> RunData:
        return load_run_data(self.prepared(split_seed, crop), protocol, split_seed, cv_fold=cv_fold)

    def manifest(self, protocol: str, split_seed: int = 0, cv_fold: str = "") -> pd.DataFrame:
        self.prepared(0 if cv_fold else split_seed)  # a fold's manifest needs no split of its seed
        return read_manifest(self.dataset, protocol, split_seed, cv_fold)

    def cv_folds(self, protocol: str, cv_seed: int, folds: int) -> list[str]:
        """Write (if absent) the ``folds`` manifests of a cross-validation of ``protocol``
        with seed ``cv_seed`` (``splits.make_cv_manifests``); return their ``cv_fold`` names.
        The data (image cache, audit) is split seed 0's: only the manifests depend on the seed."""
        prepared = self.prepared(0)
        names = [cv_fold_name(folds, k) for k in range(folds)]
        if not all(manifest_path(self.dataset, protocol, cv_seed, n).exists() for n in names):
            sha = json.loads(Path(prepared.manifests[protocol]).with_suffix(".json").read_text())["inventory_sha256"]
            for name, man in zip(names, make_cv_manifests(prepared.audit.files, protocol, folds, cv_seed)):
                write_manifest(man, self.dataset, protocol, cv_seed, sha, cv_fold=name)
        return names

    def cv_data(self, protocol: str, cv_seed: int, cv_fold: str, crop: bool = False) -> RunData:
        """The arrays of one cross-validation fold (:meth:`cv_folds` wrote its manifest)."""
        return load_run_data(self.prepared(0, crop), protocol, cv_seed, cv_fold=cv_fold)

    def manifest_summary(self, protocol: str, split_seed: int = 0) -> dict:
        f = self.prepared(split_seed).manifests[protocol]
        return json.loads(Path(f).with_suffix(".json").read_text())

    def data_for_run(self, config: dict) -> RunData:
        if config.get("cv_fold"):
            return self.cv_data(config["protocol"], config["split_seed"], config["cv_fold"], config["crop"])
        return self.run_data(config["protocol"], config["split_seed"], config["crop"])


def test_groups(dataset: str, config: dict, test_paths) -> np.ndarray:
    """Duplicate-group id of each test image of a run (from its manifest)."""

    man = read_manifest(dataset, config["protocol"], config["split_seed"],
                        config.get("cv_fold", "")).set_index("path")
    return man.loc[list(test_paths), "group"].astype(str).to_numpy()


def same_test_images(preds: list[pd.DataFrame]) -> bool:
    """True when every predictions table lists the same test images in the same order."""
    first = preds[0]["path"].tolist()
    return all(p["path"].tolist() == first for p in preds[1:])
