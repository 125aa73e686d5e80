"""Test-set metrics and their bootstrap (paper section 3.1 "testing stage",
section 4, section 5.4): the one home of every score and interval.

Accuracy, macro precision / recall / F1 and the confusion matrix as the paper
reports them, computed with scikit-learn, plus what the paper leaves out: a
bootstrap 95 % interval (the test subset is small, and the real data holds few
distinct images per class), mean +- std over repeated runs and a paired
McNemar test for comparing two models on the same test images. One bootstrap
(:func:`bootstrap_scores`) serves them all: a run's interval, the mean of
several runs and a paired difference. The leakage study's repeated
cross-validation has its own interval, the corrected resampled t of Nadeau and
Bengio (:func:`corrected_resampled_t`). Everything returned is plain Python or
NumPy, ready for JSON. No TensorFlow here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest
from scipy.stats import t as student_t
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
                     paired: bool = False, resample_sets: bool = False, statistic=scores) -> np.ndarray:
    """Bootstrap distribution of every metric (:data:`~ecgpaper.config.PAPER_METRICS`)
    of each replicate test set: ``sets`` is a list of ``(y, pred, groups)``;
    each resample draws every set's groups with replacement (duplicate
    groups: copies of one ECG are one piece of evidence; ``np.arange(n)``:
    single images). ``paired``: the sets hold the same test images (several
    runs on one split, or two models), so one draw serves all of them.
    ``resample_sets``: first draw the replicates themselves with replacement
    (a two-stage bootstrap: seeds, then groups within each), so the interval
    carries the seed-to-seed spread too. Returns an array
    (n_bootstrap, len(sets), 4). ``statistic(y, pred)``: what each resample
    computes (default :func:`scores`; ``pred`` may be a probability matrix, e.g.
    :func:`per_class_statistics`), the last axis its length. Hand-written: scikit-learn has no grouped
    (cluster) bootstrap, and its f1_score is ~1000x slower per resample."""
    rng = np.random.default_rng(seed)
    prepared = [(np.asarray(y, int), np.asarray(p), group_members(g)) for y, p, g in sets]
    out = None
    for b in range(n_bootstrap):
        draw = None
        chosen = (rng.integers(0, len(prepared), len(prepared)) if resample_sets
                  else range(len(prepared)))
        for j, (y, p, members) in enumerate(prepared[i] for i in chosen):
            if draw is None or not paired:
                draw = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[k] for k in draw])
            value = statistic(y[idx], p[idx])
            if out is None:
                out = np.empty((n_bootstrap, len(prepared), len(value)))
            out[b, j] = value
    return out if out is not None else np.empty((0, len(prepared), len(PAPER_METRICS)))


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


def corrected_resampled_t(values, test_train_ratio: float, *, confidence: float = 0.95) -> dict:
    """Mean and interval of a score over the J = K x R folds of a K-fold
    cross-validation repeated R times: the corrected resampled t of Nadeau &
    Bengio (2003), "Inference for the Generalization Error", Machine Learning 52,
    239-281 (Bouckaert & Frank 2004 for the repeated-CV form).

    The folds' training sets overlap, so their scores are correlated and the
    naive variance of the mean, S^2 / J, is too small; the correction multiplies
    the sample variance S^2 (ddof 1) by (1 / J + n_test / n_train) instead, and
    the interval is mean +- t_{J-1} * sqrt((1 / J + n_test / n_train) S^2).

    ``values``: one score (or one paired difference) per fold; ``test_train_ratio``:
    n_test / n_train of a fold (their mean over the folds). Returns ``mean``,
    ``variance`` (the corrected variance of the mean), ``df``, ``t``, ``ci95``
    (``None`` when the folds agree exactly: S^2 = 0 gives no interval, not a
    zero-width one), ``naive_ci95`` (the uncorrected t interval, for comparison),
    ``folds`` and ``all_equal``.
    """
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    j = len(x)
    if j < 2:
        raise ValueError(f"the corrected resampled t needs at least 2 folds, got {j}")
    mean, s2 = float(x.mean()), float(x.var(ddof=1))
    all_equal = bool(np.all(x == x[0]))
    t = float(student_t.ppf(0.5 + confidence / 2, j - 1))
    variance = (1 / j + float(test_train_ratio)) * s2
    half, naive = t * np.sqrt(variance), t * np.sqrt(s2 / j)
    return {"mean": mean, "variance": variance, "df": j - 1, "t": t, "folds": j, "all_equal": all_equal,
            "ci95": None if all_equal else [float(mean - half), float(mean + half)],
            "naive_ci95": None if all_equal else [float(mean - naive), float(mean + naive)]}


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


# --------------------------------------------------------------------------
# what a clinician asks next (issue 21, item 4): per-class sensitivity,
# specificity and AUROC with group intervals, calibration, temperature scaling
# --------------------------------------------------------------------------

#: equal-width confidence bins of the expected calibration error and the reliability diagram
CALIBRATION_BINS = 10
#: the temperature is searched in [1/TEMPERATURE_RANGE, TEMPERATURE_RANGE]
TEMPERATURE_RANGE = 100.0
#: the least probability a float32 softmax can answer without 0 (its smallest subnormal,
#: ~1.4e-45, a logit ~103 below the top one): a 0 is read as that, no further
PROBABILITY_FLOOR = float(np.finfo(np.float32).smallest_subnormal)


def auroc_one_vs_rest(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Each class's AUROC, one class against the rest, from the ranks of its
    probability column (the Mann-Whitney form; ties count one half, as
    scikit-learn's ``roc_auc_score``, which it equals: tests/test_calibration.py).
    NaN for a class with no positive or no negative image. Rank-based because
    the bootstrap calls it a thousand times per run: ``roc_auc_score``'s input
    checks cost ~1 ms a call."""
    from scipy.stats import rankdata

    y, proba = np.asarray(y, int), np.asarray(proba, float)
    positive = y[:, None] == np.arange(proba.shape[1])
    n_pos = positive.sum(axis=0).astype(float)
    n_neg = len(y) - n_pos
    rank_sum = (rankdata(proba, axis=0) * positive).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def per_class_statistics(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per class, one against the rest: sensitivity (TP / (TP + FN), the recall),
    specificity (TN / (TN + FP)) and AUROC, concatenated: ``[sens_0..sens_{K-1},
    spec_0.., auroc_0..]``; NaN where undefined (a class absent from ``y``). The
    predicted class is the argmax of ``proba``, as everywhere else."""
    y, proba = np.asarray(y, int), np.asarray(proba, float)
    k = proba.shape[1]
    pred = proba.argmax(axis=1)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(float)
    tp = np.diag(cm)
    positives, predicted, n = cm.sum(1), cm.sum(0), cm.sum()
    negatives = n - positives
    tn = negatives - (predicted - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(positives > 0, tp / positives, np.nan)
        specificity = np.where(negatives > 0, tn / negatives, np.nan)
    return np.concatenate([sensitivity, specificity, auroc_one_vs_rest(y, proba)])


def _finite_ci(values) -> list[float] | None:
    """:func:`percentile_ci` of the finite draws (a resample may hold no image of a
    rare class); None when fewer than two are finite."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return percentile_ci(values) if len(values) > 1 else None


def per_class_report(y_true, proba, *, groups=None, class_codes: Sequence[str] = CLASS_CODES,
                     n_bootstrap: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Per class (issue 21, item 4): ``sensitivity``, ``specificity`` and ``auroc``
    (one against the rest) with 95 % percentile intervals from the bootstrap of
    every run's metrics.json (:func:`bootstrap_scores`, resampling whole
    duplicate ``groups`` when given: the real archive holds about 30 distinct
    MI ECGs, so an interval over its copies would be far too narrow), and the
    class's ``positives`` (images) and ``positive_groups`` (distinct ECGs).
    Returns ``{"per_class": {code: {...}}, "n_bootstrap", "ci95_resamples"}``."""
    codes = list(class_codes)
    y, _ = labels_and_predictions(y_true, proba, len(codes))
    p = np.asarray(proba, float)
    group_ids = np.arange(len(y)) if groups is None else np.asarray(groups)
    point = per_class_statistics(y, p)
    draws = (bootstrap_scores([(y, p, group_ids)], n_bootstrap=n_bootstrap, seed=seed,
                              statistic=per_class_statistics)[:, 0] if n_bootstrap else None)
    k = len(codes)
    out = {}
    for i, code in enumerate(codes):
        row = {"positives": int((y == i).sum()),
               "positive_groups": int(len(np.unique(group_ids[y == i])))}
        for j, name in enumerate(("sensitivity", "specificity", "auroc")):
            value = point[j * k + i]
            row[name] = None if np.isnan(value) else float(value)
            row[f"{name}_ci95"] = _finite_ci(draws[:, j * k + i]) if draws is not None else None
        out[code] = row
    return {"per_class": out, "n_bootstrap": int(n_bootstrap),
            "ci95_resamples": "images" if groups is None else "duplicate groups"}


def apply_temperature(proba, temperature: float) -> np.ndarray:
    """Temperature scaling (Guo et al. 2017, "On calibration of modern neural
    networks"): ``softmax(logits / T)``. The models end in a softmax, so the
    logits are the log-probabilities (equal up to a per-image constant, which the
    softmax ignores). T > 1 softens over-confident answers, T < 1 sharpens; the
    predicted class never changes. A float32 output of exactly 0 lost its logit;
    it is read as :data:`PROBABILITY_FLOOR`, so a saturated answer stays nearly
    saturated at any T < 103 / (its true gap). The one home of the formula: the
    run's calibration entries and the web service (serve.inference) call it."""
    p = np.asarray(proba, dtype=np.float64)
    logits = np.log(np.clip(p, PROBABILITY_FLOOR, None)) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def negative_log_likelihood(y, proba) -> float:
    """Mean negative log-likelihood (nats) of the true classes: the loss the
    temperature minimises (scikit-learn's ``log_loss`` without its checks; a 0 is
    read as :data:`PROBABILITY_FLOOR`, as :func:`apply_temperature` reads it)."""
    y = np.asarray(y, int)
    p = np.asarray(proba, dtype=np.float64)[np.arange(len(y)), y]
    return float(-np.log(np.clip(p, PROBABILITY_FLOOR, None)).mean())


def fit_temperature(proba, y) -> float:
    """The temperature T minimising the validation NLL of ``apply_temperature(proba, T)``.

    Hand-written, one parameter: scikit-learn's ``CalibratedClassifierCV``
    fits sigmoid or isotonic maps per class one-vs-rest (4 x 2 parameters on
    ~50 validation images for sigmoid, a step function for isotonic), which can
    change the predicted class and needs an estimator to wrap, not fixed
    predictions; temperature scaling keeps the argmax and is the standard
    post-hoc fix for an over-confident network. Bounded search over log T
    (``scipy.optimize.minimize_scalar``), so T stays positive."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, int)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError("fit_temperature needs integer labels of at least one validation image")
    bound = float(np.log(TEMPERATURE_RANGE))
    res = minimize_scalar(lambda log_t: negative_log_likelihood(y, apply_temperature(proba, np.exp(log_t))),
                          bounds=(-bound, bound), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def reliability_bins(y, proba, n_bins: int = CALIBRATION_BINS) -> list[dict]:
    """The reliability diagram's points: the images binned by their top-class
    probability (confidence) in ``n_bins`` equal-width bins, each non-empty
    bin's ``accuracy`` (share answered right) and mean ``confidence``
    (``sklearn.calibration.calibration_curve``, uniform strategy, on "was the
    top class right"), with its ``lower``/``upper`` edges and image ``count``."""
    from sklearn.calibration import calibration_curve

    y = np.asarray(y, int)
    p = np.asarray(proba, float)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(int)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # calibration_curve's own binning (searchsorted on the inner edges), for the counts it omits
    ids = np.searchsorted(edges[1:-1], confidence)
    counts = np.bincount(ids, minlength=n_bins)
    accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    return [{"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": int(counts[b]),
             "accuracy": float(a), "confidence": float(c)}
            for b, a, c in zip(np.flatnonzero(counts), accuracy, mean_conf)]


def expected_calibration_error(y, proba, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE: the image-weighted mean gap between accuracy and mean confidence over
    the bins of :func:`reliability_bins` (0: perfectly calibrated)."""
    bins = reliability_bins(y, proba, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / n)


def calibration_scores(y, proba, n_bins: int = CALIBRATION_BINS) -> dict:
    """``brier`` (multiclass Brier score: the squared error summed over classes,
    averaged over images, range 0-2; scikit-learn's ``brier_score_loss``),
    ``ece``, ``nll`` and the reliability ``bins`` of one set of probabilities."""
    from sklearn.metrics import brier_score_loss

    y = np.asarray(y, int)
    p = np.asarray(proba, float)
    p = p / p.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 within ~1e-7 only
    return {"brier": float(brier_score_loss(y, p, labels=list(range(p.shape[1])))),
            "ece": expected_calibration_error(y, p, n_bins),
            "nll": negative_log_likelihood(y, p),
            "bins": reliability_bins(y, p, n_bins)}


def calibration_report(val_y, val_proba, test_y, test_proba, n_bins: int = CALIBRATION_BINS) -> dict:
    """Temperature scaling fitted on the validation predictions (:func:`fit_temperature`),
    and the test set's calibration before and after it (:func:`calibration_scores`):
    what every run's metrics.json records and the export serves (issue 21, item 4)."""
    val_y = np.asarray(val_y, int)
    t = fit_temperature(val_proba, val_y)
    return {"temperature": t, "fitted_on": "validation", "n_val": int(len(val_y)), "bins": int(n_bins),
            "val_nll_before": negative_log_likelihood(val_y, val_proba),
            "val_nll_after": negative_log_likelihood(val_y, apply_temperature(val_proba, t)),
            "before": calibration_scores(test_y, test_proba, n_bins),
            "after": calibration_scores(test_y, apply_temperature(test_proba, t), n_bins)}
