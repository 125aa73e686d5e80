"""Test-set metrics (paper section 3.1 "testing stage", section 4, section 5.4).

Accuracy, macro precision / recall / F1 and the confusion matrix as the paper
reports them, computed with scikit-learn, plus what the paper leaves out: a
bootstrap 95 % interval (the test subset is small, and the real data holds few
distinct images per class), mean +- std over repeated runs and a paired
McNemar test for comparing two models on the same test images. Everything
returned is plain Python, ready for JSON. No TensorFlow here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import (accuracy_score, classification_report, confusion_matrix,
                             f1_score, precision_recall_fscore_support)

from .config import CLASS_CODES

#: Metrics of the paper's tables (section 4 Table 1, section 5.4 Fig. 13).
PAPER_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1")


def _labels_and_predictions(y_true, proba, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
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
    """Percentile 95 % intervals of accuracy and macro F1, resampling test images
    with replacement (or whole groups, e.g. duplicate groups, when given)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(len(y_true))]
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    accuracy, f1 = [], []
    for _ in range(n_bootstrap):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        accuracy.append(accuracy_score(y_true[idx], y_pred[idx]))
        f1.append(f1_score(y_true[idx], y_pred[idx], average="macro", zero_division=0))
    return {name: [float(v) for v in np.percentile(values, [2.5, 97.5])]
            for name, values in (("accuracy", accuracy), ("f1", f1))}


def evaluate_predictions(y_true: np.ndarray, proba: np.ndarray, *,
                         class_codes: Sequence[str] = CLASS_CODES, n_bootstrap: int = 1000,
                         seed: int = 0, groups=None) -> dict:
    """The paper's test metrics for one run (sections 3.1, 4), with 95 % intervals.

    y_true: integer labels in ``class_codes`` order (or one-hot rows); proba:
    (n, classes) probabilities, predicted class = argmax. Returns ``accuracy``,
    macro ``precision`` / ``recall`` / ``f1`` (scikit-learn, zero_division=0,
    averaged over the classes present in y_true or the predictions),
    ``n_test``, ``confusion`` (rows = true, columns = predicted, every class in
    ``class_codes`` order even when absent), ``per_class`` ({code: precision,
    recall, f1, support}), ``ci95`` ({"accuracy": [lo, hi], "f1": [lo, hi]}:
    percentile bootstrap, ``n_bootstrap`` resamples seeded by ``seed``; None when
    n_bootstrap is 0) and ``n_bootstrap``. ``groups`` (one id per image, e.g.
    the duplicate group) makes the bootstrap resample whole groups, so copies
    of one ECG do not count as independent evidence.
    """
    codes = list(class_codes)
    labels = list(range(len(codes)))
    y, pred = _labels_and_predictions(y_true, proba, len(codes))
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
    }


def predictions_table(paths, y_true, proba, class_codes: Sequence[str] = CLASS_CODES) -> pd.DataFrame:
    """One row per test image: ``path``, ``true``, ``pred`` (class codes),
    ``p_<code>`` per class and ``correct`` (the run folder's predictions.csv)."""
    codes = list(class_codes)
    y, pred = _labels_and_predictions(y_true, proba, len(codes))
    p = np.asarray(proba, dtype=float)
    table = pd.DataFrame({"path": [str(x) for x in paths],
                          "true": [codes[i] for i in y],
                          "pred": [codes[i] for i in pred]})
    for k, code in enumerate(codes):
        table[f"p_{code}"] = p[:, k]
    table["correct"] = y == pred
    return table


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
    of one ECG in the test set use ``significance.group_sign_test``.
    """
    a_ok = np.asarray(correct_a, dtype=bool)
    b_ok = np.asarray(correct_b, dtype=bool)
    if a_ok.shape != b_ok.shape:
        raise ValueError(f"paired correctness arrays differ in shape: {a_ok.shape} vs {b_ok.shape}")
    b = int(np.sum(a_ok & ~b_ok))
    c = int(np.sum(~a_ok & b_ok))
    p_value = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"b": b, "c": c, "p_value": p_value}
