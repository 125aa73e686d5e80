"""Test-set metrics and their bootstrap (paper section 3.1 "testing stage",
section 4, section 5.4): the one home of every score and interval.

Accuracy, macro precision / recall / F1 and the confusion matrix as the paper
reports them, computed with scikit-learn, plus what the paper leaves out: a
bootstrap 95 % interval (the test subset is small, and the real data holds few
distinct images per class), mean +- std over repeated runs and a paired
McNemar test for comparing two models on the same test images. One bootstrap
(:func:`bootstrap_scores`) serves them all: a run's interval, the mean of
several runs, a paired difference and the leakage study's two-stage resample
over seeds then duplicate groups. Everything returned is plain Python or
NumPy, ready for JSON. No TensorFlow here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

from ecgpaper.config import CLASS_CODES, PAPER_METRICS


#: the bootstrap every single-run interval uses (a run's metrics.json, Table 1 and the
#: baseline rows of REPORT.md, the lightweight and ablation tables): one number, one interval
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def labels_and_predictions(y_true, proba, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer true labels (one-hot rows accepted) and argmax predictions."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    y = y.astype(int)
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"proba must have shape (n, {n_classes}); got {p.shape}")
    if len(p) != len(y):
        raise ValueError(f"{len(y)} labels but {len(p)} rows of probabilities")
    if len(y) == 0:
        raise ValueError("no test images to evaluate")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    return y, p.argmax(axis=1)


def _bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, n_bootstrap: int, seed: int,
                  groups=None) -> dict:
    """Percentile 95 % intervals of each metric of the paper, resampling test images
    with replacement (or whole groups, e.g. duplicate groups, when given)."""
    groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)
    draws = bootstrap_sets([(y_true, y_pred, groups)], n_bootstrap=n_bootstrap, seed=seed)
    return {name: percentile_ci(draws[:, k]) for k, name in enumerate(PAPER_METRICS)}


def evaluate_predictions(y_true: np.ndarray, proba: np.ndarray, *,
                         class_codes: Sequence[str] = CLASS_CODES, n_bootstrap: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED, groups=None) -> dict:
    """The paper's test metrics for one run (sections 3.1, 4), with 95 % intervals.

    y_true: integer labels in ``class_codes`` order (or one-hot rows); proba:
    (n, classes) probabilities, predicted class = argmax. Returns ``accuracy``,
    macro ``precision`` / ``recall`` / ``f1`` (scikit-learn, zero_division=0,
    averaged over the classes present in y_true or the predictions),
    ``n_test``, ``confusion`` (rows = true, columns = predicted, every class in
    ``class_codes`` order even when absent), ``per_class`` ({code: precision,
    recall, f1, support}), ``ci95`` ({metric: [lo, hi]} for accuracy and macro
    precision, recall and F1: percentile bootstrap, ``n_bootstrap`` resamples
    seeded by ``seed``; None when n_bootstrap is 0), ``n_bootstrap`` and
    ``ci95_resamples`` ("duplicate groups" or "images"). ``groups`` (one id per
    image, e.g. the duplicate group) makes the bootstrap resample whole groups,
    so copies of one ECG do not count as independent evidence; every run passes
    them (training.train_run).
    """
    codes = list(class_codes)
    labels = list(range(len(codes)))
    y, pred = labels_and_predictions(y_true, proba, len(codes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, average="macro", zero_division=0)
    report = classification_report(y, pred, labels=labels, target_names=codes,
                                   output_dict=True, zero_division=0)
    per_class = {code: {"precision": float(report[code]["precision"]),
                        "recall": float(report[code]["recall"]),
                        "f1": float(report[code]["f1-score"]),
                        "support": int(report[code]["support"])} for code in codes}
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "n_test": int(len(y)),
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
        "per_class": per_class,
        "ci95": _bootstrap_ci(y, pred, n_bootstrap, seed, groups) if n_bootstrap else None,
        "n_bootstrap": int(n_bootstrap),
        "ci95_resamples": "images" if groups is None else "duplicate groups",
    }


def mean_std(records: list[dict], keys: Sequence[str] = PAPER_METRICS) -> dict:
    """{key: (mean, std)} over repeated runs, for the paper's 5-run table
    (section 5.4, Fig. 13). std is the sample standard deviation (ddof=1);
    None when there are fewer than two records."""
    if not records:
        raise ValueError("no run records to summarise")
    out = {}
    for key in keys:
        values = np.array([float(r[key]) for r in records])
        std = float(values.std(ddof=1)) if len(values) > 1 else None
        out[key] = (float(values.mean()), std)
    return out


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact (binomial) McNemar test of two models on the same test images.

    ``b``: images model A gets right and B wrong, ``c``: the reverse; ``p_value``
    is the two-sided binomial test of b against b + c trials at 0.5 (1.0 when
    the models never disagree). It treats images as independent: with copies
    of one ECG in the test set use :func:`group_sign_test`.
    """
    a_ok = np.asarray(correct_a, dtype=bool)
    b_ok = np.asarray(correct_b, dtype=bool)
    if a_ok.shape != b_ok.shape:
        raise ValueError(f"paired correctness arrays differ in shape: {a_ok.shape} vs {b_ok.shape}")
    b = int(np.sum(a_ok & ~b_ok))
    c = int(np.sum(~a_ok & b_ok))
    p_value = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"b": b, "c": c, "p_value": p_value}


def group_sign_test(ok_a: np.ndarray, ok_b: np.ndarray, groups) -> dict:
    """McNemar's exact test with each duplicate group as one unit: ``a_better``
    groups where model A is right on a larger share of the copies than B,
    ``b_better`` the reverse; ``p_value``: two-sided binomial test at 0.5 (1.0
    when no group differs). Copies of one ECG are one piece of evidence."""
    members = group_members(groups)
    d = np.array([ok_a[m].mean() - ok_b[m].mean() for m in members])
    a_better, b_better = int((d > 0).sum()), int((d < 0).sum())
    p = float(binomtest(a_better, a_better + b_better, 0.5).pvalue) if a_better + b_better else 1.0
    return {"a_better": a_better, "b_better": b_better, "p_value": p}



# --------------------------------------------------------------------------
# fast bootstrap (numpy; sklearn's f1_score is ~1000x slower per resample)
# --------------------------------------------------------------------------

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


def bootstrap_scores(sets: list[tuple], *, n_bootstrap: int = 1000, seed: int = 0,
                     paired: bool = False, resample_sets: bool = False) -> np.ndarray:
    """Bootstrap distribution of every metric (:data:`~ecgpaper.config.PAPER_METRICS`)
    of each replicate test set: ``sets`` is a list of ``(y, pred, groups)``;
    each resample draws every set's groups with replacement (duplicate
    groups: copies of one ECG are one piece of evidence; ``np.arange(n)``:
    single images). ``paired``: the sets hold the same test images (several
    runs on one split, or two models), so one draw serves all of them.
    ``resample_sets``: first draw the replicates themselves with replacement
    (a two-stage bootstrap: seeds, then groups within each), so the interval
    carries the seed-to-seed spread too. Returns an array
    (n_bootstrap, len(sets), 4). Hand-written: scikit-learn has no grouped
    (cluster) bootstrap, and its f1_score is ~1000x slower per resample."""
    rng = np.random.default_rng(seed)
    prepared = [(np.asarray(y, int), np.asarray(p, int), group_members(g)) for y, p, g in sets]
    out = np.empty((n_bootstrap, len(prepared), len(PAPER_METRICS)))
    for b in range(n_bootstrap):
        draw = None
        chosen = (rng.integers(0, len(prepared), len(prepared)) if resample_sets
                  else range(len(prepared)))
        for j, (y, p, members) in enumerate(prepared[i] for i in chosen):
            if draw is None or not paired:
                draw = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[k] for k in draw])
            out[b, j] = scores(y[idx], p[idx])
    return out


def bootstrap_sets(sets: list[tuple], *, n_bootstrap: int = 1000, seed: int = 0,
                   paired: bool = False, resample_sets: bool = False) -> np.ndarray:
    """Bootstrap distribution of the MEAN of each metric over the replicate
    test sets (:func:`bootstrap_scores`, same arguments): (n_bootstrap, 4)."""
    return bootstrap_scores(sets, n_bootstrap=n_bootstrap, seed=seed, paired=paired,
                            resample_sets=resample_sets).mean(axis=1)


def paired_difference(y, pred_a, pred_b, groups, *, metric: str = "accuracy",
                      n_bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of ``metric`` of A minus that of B on the same
    test images, resampling duplicate ``groups`` once for both models."""
    draws = bootstrap_scores([(y, pred_a, groups), (y, pred_b, groups)], n_bootstrap=n_bootstrap,
                             seed=seed, paired=True)
    k = PAPER_METRICS.index(metric)
    return draws[:, 0, k] - draws[:, 1, k]


def percentile_ci(values) -> list[float]:
    lo, hi = np.percentile(np.asarray(values, float), [2.5, 97.5])
    return [float(lo), float(hi)]


def majority_rate(y) -> float:
    """Accuracy of always answering the test set's most frequent class."""
    y = np.asarray(y, int)
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


#: collapse detector (training.train_run, every run's metrics.json): a subset's
#: predictions are "constant" when one class takes at least this share of them
#: (and the subset's own majority class is rarer), "uniform" when the mean
#: per-image predictive entropy is at least this share of log2(classes)
COLLAPSE_TOP_SHARE = 0.9
COLLAPSE_ENTROPY_SHARE = 0.95
#: train accuracy at most this far above the training labels' majority rate: not fitted
COLLAPSE_TRAIN_MARGIN = 0.05


def prediction_spread(proba: np.ndarray, y_true: np.ndarray | None = None) -> dict:
    """How varied a subset's predictions are: the share of the most frequent
    predicted class, the entropy (bits) of the predicted classes' histogram, the
    mean per-image predictive entropy (bits; log2 4 = 2 for uniform output), and
    the true labels' majority rate when given."""
    proba = np.asarray(proba, dtype=np.float64)
    k = proba.shape[1]
    counts = np.bincount(proba.argmax(axis=1), minlength=k)
    share = counts / max(counts.sum(), 1)
    nz = share[share > 0]
    p = np.clip(proba, 1e-12, 1.0)
    out = {"top_class_share": float(share.max()),
           "predicted_class_entropy_bits": float(-(nz * np.log2(nz)).sum()),
           "mean_predictive_entropy_bits": float(-(p * np.log2(p)).sum(axis=1).mean()),
           "max_entropy_bits": float(np.log2(k))}
    if y_true is not None:
        out["majority_rate"] = majority_rate(y_true)
    return out


def collapse_check(train_accuracy: float, y_train, spreads: dict[str, dict]) -> dict:
    """Did a run collapse (docs/training_recipe.md)? ``spreads``: subset ->
    :func:`prediction_spread` with ``majority_rate``. Collapsed when, on any subset,
    one class takes ``COLLAPSE_TOP_SHARE`` of the predictions (and is not that
    common among the true labels) or the output is near uniform, or when the
    train accuracy stays within ``COLLAPSE_TRAIN_MARGIN`` of the training labels'
    majority rate. Returns the evidence, ``reasons`` in words and ``collapsed``."""
    train_majority = majority_rate(y_train)
    reasons = []
    for subset, s in spreads.items():
        if s["top_class_share"] >= COLLAPSE_TOP_SHARE and s.get("majority_rate", 0.0) < COLLAPSE_TOP_SHARE:
            reasons.append(f"{subset}: one class takes {s['top_class_share']:.0%} of the predictions")
        if s["mean_predictive_entropy_bits"] >= COLLAPSE_ENTROPY_SHARE * s["max_entropy_bits"]:
            reasons.append(f"{subset}: near-uniform output ({s['mean_predictive_entropy_bits']:.2f} of "
                           f"{s['max_entropy_bits']:.0f} bits)")
    if train_accuracy <= train_majority + COLLAPSE_TRAIN_MARGIN:
        reasons.append(f"train accuracy {train_accuracy:.3f} at the majority rate {train_majority:.3f}")
    return {**spreads, "train_accuracy": float(train_accuracy), "train_majority_rate": train_majority,
            "reasons": reasons, "collapsed": bool(reasons)}
