"""Test metrics, intervals, run summaries and McNemar (ecgpaper.metrics)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from ecgpaper.config import CLASS_CODES
from ecgpaper.metrics import corrected_resampled_t, evaluate_predictions, mcnemar, mean_std
from ecgpaper.runs.store import predictions_table

# A hand-made test set: 10 images, classes MI=0, HMI=1, HB=2, NORM=3.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
Y_PRED = np.array([0, 0, 1, 1, 1, 2, 3, 2, 3, 0])
# rows = true, columns = predicted
CONFUSION = [[2, 1, 0, 0],
             [0, 2, 0, 0],
             [0, 0, 2, 1],
             [1, 0, 0, 1]]


def proba_for(pred: np.ndarray, n_classes: int = 4) -> np.ndarray:
    """Probabilities whose argmax is ``pred``."""
    p = np.full((len(pred), n_classes), 0.1)
    p[np.arange(len(pred)), pred] = 1 - 0.1 * (n_classes - 1)
    return p


def predictions_with_accuracy(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    wrong = rng.random(n) > accuracy
    pred = np.where(wrong, (y + rng.integers(1, 4, n)) % 4, y)
    return y, proba_for(pred)


def test_metrics_match_hand_computation_and_sklearn():
    m = evaluate_predictions(Y_TRUE, proba_for(Y_PRED), n_bootstrap=0)
    assert m["confusion"] == CONFUSION
    assert m["accuracy"] == pytest.approx(0.7)
    # per class precision 2/3, 2/3, 1, 1/2; recall 2/3, 1, 2/3, 1/2; F1 2/3, .8, .8, .5
    assert m["precision"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0.5) / 4)
    assert m["recall"] == pytest.approx((2 / 3 + 1 + 2 / 3 + 0.5) / 4)
    assert m["f1"] == pytest.approx((2 / 3 + 0.8 + 0.8 + 0.5) / 4)
    p, r, f, _ = precision_recall_fscore_support(Y_TRUE, Y_PRED, average="macro", zero_division=0)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
    assert m["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    assert m["n_test"] == 10 and m["ci95"] is None
    assert m["per_class"]["HMI"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert list(m["per_class"]) == list(CLASS_CODES)


def test_one_hot_labels_give_the_same_metrics():
    one_hot = np.eye(4)[Y_TRUE]
    assert evaluate_predictions(one_hot, proba_for(Y_PRED), n_bootstrap=50) == \
        evaluate_predictions(Y_TRUE, proba_for(Y_PRED), n_bootstrap=50)


def test_result_is_plain_json():
    m = evaluate_predictions(Y_TRUE, proba_for(Y_PRED), n_bootstrap=50)
    assert json.loads(json.dumps(m)) == m
    assert type(m["accuracy"]) is float and type(m["confusion"][0][0]) is int
    assert all(type(v) is float for v in m["ci95"]["f1"])


def test_absent_class_keeps_its_row_and_zero_scores():
    y = np.array([0, 0, 1, 1, 3, 3])  # no HB image, none predicted
    pred = np.array([0, 1, 1, 1, 3, 0])
    m = evaluate_predictions(y, proba_for(pred), n_bootstrap=0)
    assert m["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]]
    assert m["per_class"]["HB"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # macro averages over the classes that occur, as scikit-learn does by default
    assert m["f1"] == pytest.approx(precision_recall_fscore_support(
        y, pred, average="macro", zero_division=0)[2])


def test_ci_contains_estimate_narrows_with_more_images_and_is_seeded():
    small = evaluate_predictions(*predictions_with_accuracy(40, 0.8, seed=1), n_bootstrap=300)
    large = evaluate_predictions(*predictions_with_accuracy(800, 0.8, seed=1), n_bootstrap=300)
    for m in (small, large):
        for key in ("accuracy", "f1"):
            lo, hi = m["ci95"][key]
            assert lo <= m[key] <= hi
    width = {name: m["ci95"]["accuracy"][1] - m["ci95"]["accuracy"][0]
             for name, m in (("small", small), ("large", large))}
    assert width["large"] < width["small"] / 2
    data = predictions_with_accuracy(60, 0.7, seed=2)
    assert evaluate_predictions(*data, n_bootstrap=200, seed=5)["ci95"] == \
        evaluate_predictions(*data, n_bootstrap=200, seed=5)["ci95"]
    assert evaluate_predictions(*data, n_bootstrap=200, seed=5)["ci95"] != \
        evaluate_predictions(*data, n_bootstrap=200, seed=6)["ci95"]


def test_group_bootstrap_widens_interval_for_duplicated_images():
    y, proba = predictions_with_accuracy(30, 0.7, seed=3)
    y10, proba10 = np.repeat(y, 10), np.repeat(proba, 10, axis=0)  # every ECG 10 times
    groups = np.repeat(np.arange(30), 10)
    naive = evaluate_predictions(y10, proba10, n_bootstrap=300)["ci95"]["accuracy"]
    grouped = evaluate_predictions(y10, proba10, n_bootstrap=300, groups=groups)["ci95"]["accuracy"]
    assert grouped[1] - grouped[0] > 2 * (naive[1] - naive[0])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        evaluate_predictions(Y_TRUE, np.ones((10, 3)))
    with pytest.raises(ValueError, match="labels"):
        evaluate_predictions(Y_TRUE[:5], proba_for(Y_PRED))


def test_predictions_table():
    paths = [f"img{i}.jpg" for i in range(10)]
    table = predictions_table(paths, Y_TRUE, proba_for(Y_PRED))
    assert list(table.columns) == ["path", "true", "pred", "p_MI", "p_HMI", "p_HB", "p_NORM", "correct"]
    assert table["true"].tolist()[:4] == ["MI", "MI", "MI", "HMI"]
    assert table["pred"].tolist()[2] == "HMI" and not table["correct"][2]
    assert table["correct"].sum() == 7
    assert table["p_MI"][0] == pytest.approx(0.7)


def test_mean_std_is_sample_std():
    rng = np.random.default_rng(0)
    records = [{k: float(v) for k, v in zip(("accuracy", "precision", "recall", "f1"), rng.random(4))}
               for _ in range(5)]
    summary = mean_std(records)
    for key in ("accuracy", "precision", "recall", "f1"):
        values = np.array([r[key] for r in records])
        assert summary[key] == pytest.approx((values.mean(), values.std(ddof=1)))
    assert mean_std(records[:1])["f1"] == (records[0]["f1"], None)


def test_mcnemar_known_case():
    a = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 5)
    result = mcnemar(a, b)
    assert (result["b"], result["c"]) == (10, 2)
    assert result["p_value"] == pytest.approx(158 / 4096)  # 2 * P(X >= 10), X ~ Bin(12, 1/2)
    assert result["p_value"] == pytest.approx(0.0386, abs=1e-4)
    assert mcnemar(b, a)["p_value"] == pytest.approx(result["p_value"])
    assert mcnemar(a, a) == {"b": 0, "c": 0, "p_value": 1.0}


def test_imports_without_tensorflow():
    code = "import sys, ecgpaper.metrics; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_corrected_resampled_t_matches_a_hand_computed_value():
    """Nadeau & Bengio (2003): four folds 0.1, 0.2, 0.3, 0.4 with n_test / n_train 0.25:
    mean 0.25, S^2 = 0.05 / 3, corrected variance (1/4 + 1/4) S^2 = 0.0083333,
    t(3 df, 0.975) = 3.182446, half width 3.182446 * 0.0912871 = 0.2905163; the naive
    t interval (S^2 / 4) has half width 3.182446 * 0.0645497 = 0.2054260."""
    r = corrected_resampled_t([0.1, 0.2, 0.3, 0.4], 0.25)
    assert r["mean"] == pytest.approx(0.25) and r["df"] == 3 and r["folds"] == 4
    assert r["variance"] == pytest.approx(0.05 / 3 / 2)
    assert r["t"] == pytest.approx(3.182446, abs=1e-6)
    assert r["ci95"] == pytest.approx([0.25 - 0.2905163, 0.25 + 0.2905163], abs=1e-6)
    assert r["naive_ci95"] == pytest.approx([0.25 - 0.2054260, 0.25 + 0.2054260], abs=1e-6)
    # folds in exact agreement: no interval (not a zero-width one)
    same = corrected_resampled_t([1.0, 1.0, 1.0], 0.5)
    assert same["all_equal"] and same["ci95"] is None and same["mean"] == 1.0
    with pytest.raises(ValueError):
        corrected_resampled_t([0.5], 0.2)
