"""Per-class sensitivity, specificity and AUROC with group intervals, calibration and
temperature scaling (ecgpaper.metrics; issue 21, item 4), against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from ecgpaper.metrics import (
    apply_temperature,
    bootstrap_sets,
    calibration_report,
    calibration_scores,
    evaluate_predictions,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    per_class_report,
    per_class_statistics,
    reliability_bins,
)

# the hand-made test set of tests/test_evaluation.py: MI=0, HMI=1, HB=2, NORM=3
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
Y_PRED = np.array([0, 0, 1, 1, 1, 2, 3, 2, 3, 0])


def one_hot_like(pred, top=0.7):
    p = np.full((len(pred), 4), (1 - top) / 3)
    p[np.arange(len(pred)), pred] = top
    return p


def test_sensitivity_and_specificity_per_class_match_the_confusion_matrix_by_hand():
    # confusion (rows true): MI [2,1,0,0], HMI [0,2,0,0], HB [0,0,2,1], NORM [1,0,0,1]
    stats = per_class_statistics(Y_TRUE, one_hot_like(Y_PRED))
    sensitivity, specificity = stats[:4], stats[4:8]
    assert sensitivity == pytest.approx([2 / 3, 2 / 2, 2 / 3, 1 / 2])
    # MI: 7 negatives, 1 predicted MI among them (a NORM); HMI: 8 negatives, 1 false HMI (an MI)
    assert specificity == pytest.approx([6 / 7, 7 / 8, 7 / 7, 7 / 8])


def test_auroc_per_class_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    proba = np.round(rng.dirichlet(np.ones(4), 60), 1)  # rounding makes ties
    auroc = per_class_statistics(y, proba)[8:]
    assert auroc == pytest.approx([roc_auc_score(y == k, proba[:, k]) for k in range(4)])
    # an absent class has no sensitivity and no AUROC, but a specificity
    stats = per_class_statistics(np.array([0, 0, 1, 1]), one_hot_like(np.array([0, 1, 1, 1])))
    assert np.isnan(stats[2]) and np.isnan(stats[8 + 2]) and stats[4 + 2] == 1.0


def test_per_class_intervals_resample_duplicate_groups_with_the_runs_bootstrap():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 30)
    pred = np.where(rng.random(30) < 0.7, y, (y + 1) % 4)
    y10, p10 = np.repeat(y, 10), np.repeat(one_hot_like(pred), 10, axis=0)  # every ECG 10 times
    groups = np.repeat(np.arange(30), 10)
    naive = per_class_report(y10, p10, n_bootstrap=300)["per_class"]["MI"]
    grouped = per_class_report(y10, p10, n_bootstrap=300, groups=groups)
    mi = grouped["per_class"]["MI"]
    assert grouped["ci95_resamples"] == "duplicate groups"
    assert mi["positives"] == 10 * (y == 0).sum() and mi["positive_groups"] == (y == 0).sum()
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(mi["sensitivity_ci95"]) > 2 * width(naive["sensitivity_ci95"])
    assert mi["sensitivity_ci95"][0] <= mi["sensitivity"] <= mi["sensitivity_ci95"][1]
    # the same draws as the accuracy interval of metrics.json: one bootstrap, one seed
    acc = evaluate_predictions(y10, p10, n_bootstrap=300, groups=groups)["ci95"]["accuracy"]
    assert acc == pytest.approx(np.percentile(bootstrap_sets([(y10, p10.argmax(1), groups)],
                                                             n_bootstrap=300, seed=0)[:, 0], [2.5, 97.5]))


def test_a_perfectly_calibrated_set_has_ece_near_zero_and_an_overconfident_one_does_not():
    rng = np.random.default_rng(1)
    n = 40_000
    confidence = rng.uniform(0.3, 1.0, n)
    pred = rng.integers(0, 4, n)
    right = rng.random(n) < confidence  # right exactly as often as it says
    y = np.where(right, pred, (pred + rng.integers(1, 4, n)) % 4)
    proba = np.full((n, 4), 0.0)
    proba[np.arange(n), pred] = confidence
    others = (1 - confidence) / 3
    for k in range(1, 4):
        proba[np.arange(n), (pred + k) % 4] = others
    assert expected_calibration_error(y, proba) < 0.01
    overconfident = apply_temperature(proba, 0.3)  # the same answers, far surer
    assert expected_calibration_error(y, overconfident) > 0.1
    bins = reliability_bins(y, proba)
    assert sum(b["count"] for b in bins) == n and all(b["lower"] <= b["confidence"] <= b["upper"] for b in bins)


def test_ece_and_brier_of_a_tiny_set_by_hand():
    y = np.array([0, 1])
    proba = np.array([[0.9, 0.1, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0]])
    # bin 0.9-1.0: confidence 0.9, right -> gap 0.1; bin 0.5-0.6 ... 0.6 lies on an edge: searchsorted puts
    # it in 0.5-0.6 (left-closed at the inner edges as calibration_curve); wrong -> gap 0.6
    assert expected_calibration_error(y, proba) == pytest.approx((0.1 + 0.6) / 2)
    # Brier: ((0.1^2 + 0.1^2) + (0.6^2 + 0.6^2)) / 2
    s = calibration_scores(y, proba)
    assert s["brier"] == pytest.approx((0.02 + 0.72) / 2)
    assert s["brier"] == pytest.approx(brier_score_loss(y, proba, labels=[0, 1, 2, 3]))
    assert s["nll"] == pytest.approx(log_loss(y, proba, labels=[0, 1, 2, 3]))


def overconfident_logits(n=400, seed=2):
    """A model right 70 % of the time whose logits say ~99 %."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < 0.7, y, (y + rng.integers(1, 4, n)) % 4)
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), pred] += 6.0
    e = np.exp(logits - logits.max(1, keepdims=True))
    return y, e / e.sum(1, keepdims=True)


def test_temperature_of_an_overconfident_set_is_above_one_lowers_nll_and_keeps_the_answers():
    y, proba = overconfident_logits()
    t = fit_temperature(proba, y)
    assert t > 1.5
    calibrated = apply_temperature(proba, t)
    assert negative_log_likelihood(y, calibrated) < negative_log_likelihood(y, proba) - 0.1
    assert (calibrated.argmax(1) == proba.argmax(1)).all()
    assert np.allclose(calibrated.sum(1), 1)
    # the minimum: a little off T on either side is worse
    for other in (t * 0.9, t * 1.1):
        assert negative_log_likelihood(y, apply_temperature(proba, other)) > negative_log_likelihood(y, calibrated)
    assert np.allclose(apply_temperature(proba, 1.0), proba)
    # an under-confident set is sharpened (T < 1)
    assert fit_temperature(apply_temperature(proba, 3 * t), y) < 1


def test_calibration_report_fits_on_validation_and_scores_test_before_and_after():
    y_val, p_val = overconfident_logits(seed=4)
    y_test, p_test = overconfident_logits(seed=5)
    r = calibration_report(y_val, p_val, y_test, p_test)
    assert r["temperature"] == pytest.approx(fit_temperature(p_val, y_val))
    assert r["val_nll_after"] < r["val_nll_before"] and r["n_val"] == len(y_val)
    assert r["after"]["ece"] < r["before"]["ece"] and r["after"]["brier"] < r["before"]["brier"]
    assert r["after"]["nll"] == pytest.approx(negative_log_likelihood(y_test, apply_temperature(p_test, r["temperature"])))


def test_a_float32_softmax_zero_is_read_as_its_smallest_value_not_as_minus_infinity():
    # a saturated float32 answer: the zeros lost their logits (at least ~103 below the top one)
    p = np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    assert negative_log_likelihood(np.array([0]), p) == pytest.approx(-np.log(np.finfo(np.float32).smallest_subnormal))
    assert apply_temperature(p, 2.0)[0, 1] == pytest.approx(1.0)  # still saturated at a gap of ~52
    assert apply_temperature(p, 100.0)[0, 1] == pytest.approx(1 / (1 + 3 * np.exp(-103.28 / 100)), abs=1e-3)
    assert np.isfinite(fit_temperature(np.repeat(p, 4, axis=0), np.array([0, 1, 2, 1])))
