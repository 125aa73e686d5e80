"""Beyond the paper (sections 5.2 and 5.5): the shared pieces of notebook 06.

The paper's limitations section (5.2) lists what it did not do: no
interpretability, no robustness to real-world distortions, two architectures,
one data source; section 5.5 proposes lighter models and ensembles. And its
98 % may be inflated, because the archive holds many byte-identical copies
that a random 70/15/15 split puts on both sides. One module per stage:

- :mod:`ecgpaper.leakage` (item 1): the paper's VGG16 setting under the
  ``paper``, ``grouped`` and ``kaggle`` protocols, with and without the header
  crop, plus a model-free 1-nearest-neighbour probe of the split itself;
- :mod:`ecgpaper.interpretability` (item 2): Grad-CAM grids and the share of
  heat on the header band;
- :mod:`ecgpaper.robustness` (item 3): accuracy under graded corruptions;
- :mod:`ecgpaper.lightweight` (items 4, 6): MobileNetV2 and EfficientNetB0
  beside the paper's models, latency, size, and a soft-voting ensemble;
- :mod:`ecgpaper.significance` (item 5): every headline number with an
  interval over duplicate groups and the verdict of :mod:`ecgpaper.verdicts`,
  and VGG16 vs ResNet50 paired over duplicate groups.

This module holds what they share: explicit run lists scaled by a profile and
trained with the registry's resume logic (the same run ids as
``experiments.run_experiment``, so a finished ``grid`` or ``baseline`` run of
the same setting is reused, never retrained), data prepared once per split
seed and crop, fast bootstrap helpers, the names of every output, and the
"Beyond the paper" section of REPORT.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths
from .config import CLASS_CODES, get_profile
from .errors import UserError
from .training import RunData

#: Every output of notebook 06, by stage: (figures, tables). Stable names.
OUTPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "leakage": (("fig14_leakage",), ("table_leakage", "table_leakage_gap", "table_leakage_copies")),
    "gradcam": (("fig15_gradcam_grid",), ("table_gradcam_header_fraction",)),
    "robustness": (("fig16_robustness",), ("table_robustness",)),
    "lightweight": (("fig17_accuracy_vs_latency",), ("table_lightweight",)),
    "statistics": ((), ("table_statistics",)),
    "input_ablation": ((), ("table_input_ablation",)),
}

FIGURE_CAPTIONS = {
    "fig14_leakage": "Beyond the paper, 5.2: accuracy and macro F1 per split protocol (leakage study)",
    "fig15_gradcam_grid": "Beyond the paper, 5.2: Grad-CAM overlays, correct and wrong test images per class",
    "fig16_robustness": "Beyond the paper, 5.2: accuracy vs corruption severity per model",
    "fig17_accuracy_vs_latency": "Beyond the paper, 5.5: accuracy vs CPU latency per image",
}


def output_names() -> tuple[list[str], list[str]]:
    """(figure names, table names) that notebook 06 writes."""
    figs = [f for stage in OUTPUTS.values() for f in stage[0]]
    tables = [t for stage in OUTPUTS.values() for t in stage[1]]
    return figs, tables


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
            from .data import prepare_data

            quiet = (lambda *a, **k: None) if self._prepared else self.log
            self._prepared[key] = prepare_data(
                self.data_root, profile=self.profile, seed=split_seed,
                image_size=get_profile(self.profile).image_size, fit=self.fit, crop=crop,
                progress=self.verbose > 0, log=quiet)
        return self._prepared[key]

    @property
    def dataset(self) -> str:
        return next(iter(self._prepared.values())).dataset if self._prepared else self.prepared().dataset

    def has_protocol(self, protocol: str, split_seed: int = 0) -> bool:
        return protocol in self.prepared(split_seed).manifests

    def run_data(self, protocol: str, split_seed: int = 0, crop: bool = False) -> RunData:
        from .experiments import load_run_data

        return load_run_data(self.prepared(split_seed, crop), protocol, split_seed)

    def manifest(self, protocol: str, split_seed: int = 0) -> pd.DataFrame:
        from .splits import read_manifest

        self.prepared(split_seed)
        return read_manifest(self.dataset, protocol, split_seed)

    def manifest_summary(self, protocol: str, split_seed: int = 0) -> dict:
        f = self.prepared(split_seed).manifests[protocol]
        return json.loads(Path(f).with_suffix(".json").read_text())

    def data_for_run(self, config: dict) -> RunData:
        return self.run_data(config["protocol"], config["split_seed"], config["crop"])


# --------------------------------------------------------------------------
# predictions of finished runs
# --------------------------------------------------------------------------

def run_folder(dataset: str, profile: str, run_id: str) -> Path:
    return paths.profile_results(dataset, profile) / "runs" / run_id


def load_predictions(dataset: str, profile: str, run_id: str) -> pd.DataFrame:
    """A finished run's predictions.csv (path, true, pred, p_<class>, correct)."""
    f = run_folder(dataset, profile, run_id) / "predictions.csv"
    if not f.exists():
        raise UserError(f"run {run_id} has no predictions ({f}); rerun its experiment")
    return pd.read_csv(f, keep_default_na=False)


def probabilities(pred: pd.DataFrame) -> np.ndarray:
    return pred[[f"p_{c}" for c in CLASS_CODES]].to_numpy(float)


def label_indices(codes) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(CLASS_CODES)}
    return np.array([lookup[c] for c in codes], dtype=int)


def test_groups(dataset: str, config: dict, test_paths) -> np.ndarray:
    """Duplicate-group id of each test image of a run (from its manifest)."""
    from .splits import read_manifest

    man = read_manifest(dataset, config["protocol"], config["split_seed"]).set_index("path")
    return man.loc[list(test_paths), "group"].astype(str).to_numpy()


# --------------------------------------------------------------------------
# fast bootstrap (numpy; sklearn's f1_score is ~1000x slower per resample)
# --------------------------------------------------------------------------

METRIC_NAMES = ("accuracy", "precision", "recall", "f1")


def scores(y: np.ndarray, pred: np.ndarray, n_classes: int = len(CLASS_CODES)) -> np.ndarray:
    """Accuracy and macro precision, recall and F1 as scikit-learn computes
    them (zero_division=0, averaged over the classes present in ``y`` or
    ``pred``), from one ``bincount``: [accuracy, precision, recall, f1]."""
    y, pred = np.asarray(y, int), np.asarray(pred, int)
    cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    if not present.any():
        return np.zeros(4)
    return np.array([tp.sum() / len(y), precision[present].mean(), recall[present].mean(),
                     f1[present].mean()])


def acc_f1(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro F1 (see :func:`scores`)."""
    s = scores(y, pred)
    return float(s[0]), float(s[3])


def group_members(groups) -> list[np.ndarray]:
    """Indices of each distinct value of ``groups``."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def bootstrap_sets(sets: list[tuple], *, n_bootstrap: int = 1000, seed: int = 0,
                   paired: bool = False, resample_sets: bool = False) -> np.ndarray:
    """Bootstrap distribution of the MEAN of each metric (:data:`METRIC_NAMES`)
    over replicate test sets: ``sets`` is a list of ``(y, pred, groups)``;
    each resample draws every set's groups with replacement (duplicate
    groups: copies of one ECG are one piece of evidence; ``np.arange(n)``:
    single images). ``paired``: the sets hold the same test images (several
    runs on one split), so one draw serves all of them. ``resample_sets``:
    first draw the replicates themselves with replacement (a two-stage
    bootstrap: seeds, then groups within each), so the interval carries the
    seed-to-seed spread too. Returns an array (n_bootstrap, 4)."""
    rng = np.random.default_rng(seed)
    prepared = [(np.asarray(y, int), np.asarray(p, int), group_members(g)) for y, p, g in sets]
    out = np.empty((n_bootstrap, 4))
    for b in range(n_bootstrap):
        values, draw = [], None
        chosen = (rng.integers(0, len(prepared), len(prepared)) if resample_sets
                  else range(len(prepared)))
        for y, p, members in (prepared[i] for i in chosen):
            if draw is None or not paired:
                draw = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[k] for k in draw])
            values.append(scores(y[idx], p[idx]))
        out[b] = np.mean(values, axis=0)
    return out


def percentile_ci(values) -> list[float]:
    lo, hi = np.percentile(np.asarray(values, float), [2.5, 97.5])
    return [float(lo), float(hi)]


def fmt_ci(ci) -> str:
    """'lo-hi' as the paper's tables (figures._ci); 'lo to hi' with signs when
    an end is negative (a difference), so the dash is never a minus sign."""
    if ci is None or len(ci) != 2:
        return ""
    lo, hi = float(ci[0]), float(ci[1])
    return f"{lo:+.3f} to {hi:+.3f}" if min(lo, hi) < 0 else f"{lo:.3f}-{hi:.3f}"


def majority_rate(y) -> float:
    """Accuracy of always answering the test set's most frequent class."""
    y = np.asarray(y, int)
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


# --------------------------------------------------------------------------
# REPORT.md section
# --------------------------------------------------------------------------

def _read_table(dataset: str, profile: str, name: str) -> pd.DataFrame | None:
    f = paths.profile_results(dataset, profile) / f"{name}.csv"
    return pd.read_csv(f, keep_default_na=False) if f.exists() else None


def report_lines(dataset: str, profile: str) -> list[str]:
    """The "Beyond the paper" section of REPORT.md, from the tables notebook 06
    wrote; says what is missing when it has not run (never raises)."""
    lines = ["", "## Beyond the paper (sections 5.2 and 5.5)", ""]
    found = False
    try:
        stats = _read_table(dataset, profile, "table_statistics")
        if stats is not None:
            found = True
            from .significance import report_lines as stats_lines

            lines += stats_lines(stats)
        leak = paths.profile_results(dataset, profile) / "leakage_summary.json"
        if leak.exists():
            found = True
            from .leakage import conclusions, copy_effect_table

            summary = json.loads(leak.read_text())
            lines += ["### Leakage: does the split test on copies of training images?", ""]
            lines += [f"- {s}" for s in conclusions(summary)]
            copies = copy_effect_table(summary)
            if len(copies):
                lines += ["", "Within the `paper` split, accuracy on test images with and without a copy "
                              "in train (means over seeds, 95 % CI over seeds and duplicate groups):", "",
                          copies.drop(columns=["protocol"]).to_markdown(index=False, floatfmt=".3f")]
            lines.append("")
        heat = _read_table(dataset, profile, "table_gradcam_header_fraction")
        if heat is not None:
            found = True
            from .interpretability import summary_sentences

            lines += ["### Grad-CAM: where the models look", ""]
            lines += [f"- {s}" for s in summary_sentences(heat)] + [""]
        rob = _read_table(dataset, profile, "table_robustness")
        if rob is not None:
            found = True
            from .robustness import summary_sentences as rob_sentences

            lines += ["### Robustness to acquisition corruptions", ""]
            lines += [f"- {s}" for s in rob_sentences(rob)] + [""]
        light = _read_table(dataset, profile, "table_lightweight")
        if light is not None:
            found = True
            from .lightweight import summary_sentences as light_sentences

            lines += ["### Lightweight models and the ensemble", ""]
            lines += [f"- {s}" for s in light_sentences(light)] + [""]
        ablation = _read_table(dataset, profile, "table_input_ablation")
        if ablation is not None:
            found = True
            lines += ["### Inputs that match the weights: scaling x BatchNorm (3.1.1, 3.5)", "",
                      ablation.drop(columns=["run"]).to_markdown(index=False, floatfmt=".3f"), ""]
    except Exception as exc:  # the report must build even if one table is malformed
        lines += [f"(the beyond-the-paper section could not be built: {type(exc).__name__}: {exc})", ""]
    if not found:
        lines += ["Not run yet: notebook `06_beyond_the_paper` (leakage, Grad-CAM, robustness, "
                  "lightweight models, statistics).", ""]
    return lines


def same_test_images(preds: list[pd.DataFrame]) -> bool:
    """True when every predictions table lists the same test images in the same order."""
    first = preds[0]["path"].tolist()
    return all(p["path"].tolist() == first for p in preds[1:])
