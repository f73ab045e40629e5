"""Metrics: golden values computed by hand, then cross-checked against scikit-learn."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from transfuse.evaluate.metrics import classification_metrics, reliability_bins

CLASSES = ["a", "b", "c"]
Y = np.array([0, 1, 2, 1])
P = np.array(
    [
        [0.7, 0.2, 0.1],  # pred a, right, conf .70
        [0.1, 0.65, 0.25],  # pred b, right, conf .65
        [0.2, 0.5, 0.3],  # pred b, wrong, conf .50
        [0.5, 0.4, 0.1],  # pred a, wrong, conf .50
    ]
)


def test_golden_by_hand():
    m = classification_metrics(Y, P, CLASSES)
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 0]]
    # precision a=1/2 b=1/2 c=0 (never predicted); recall a=1 b=1/2 c=0
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["c"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    assert m["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.65) + math.log(0.3) + math.log(0.4)) / 4)
    # bins (width 1/15): .70 -> bin 10, .65 -> bin 9, .50 x2 -> bin 7 (accuracy 0)
    assert m["ece"] == pytest.approx(0.25 * 0.3 + 0.25 * 0.35 + 0.5 * 0.5)
    # sum_k (p_k - onehot_k)^2 per row: .14, .195, .78, .62
    assert m["brier"] == pytest.approx((0.14 + 0.195 + 0.78 + 0.62) / 4)


def test_reliability_bins_by_hand():
    r = reliability_bins(Y, P, n_bins=15)
    assert len(r["edges"]) == 16 and r["edges"][0] == 0.0 and r["edges"][-1] == 1.0
    assert sum(r["count"]) == 4
    assert r["count"][7] == 2 and r["count"][9] == 1 and r["count"][10] == 1
    assert r["confidence"][7] == pytest.approx(0.5) and r["accuracy"][7] == 0.0
    assert r["accuracy"][10] == 1.0 and r["confidence"][10] == pytest.approx(0.7)
    assert r["confidence"][0] is None and r["accuracy"][14] is None
    # two bins: .50 x2 wrong -> bin 0 ([0, .5]), .65/.70 right -> bin 1 (mean conf .675)
    r2 = reliability_bins(Y, P, n_bins=2)
    assert r2["count"] == [2, 2]
    assert r2["ece"] == pytest.approx(0.5 * 0.5 + 0.5 * (1 - 0.675))


def test_log_loss_clips_and_keeps_absent_classes():
    # class "c" absent from y_true; one row gives its true class probability 0 -> clipped at 1e-15
    y = np.array([0, 1])
    p = np.array([[1.0, 0.0, 0.0], [0.9, 0.0, 0.1]])
    m = classification_metrics(y, p, CLASSES)
    assert math.isfinite(m["log_loss"])
    assert m["log_loss"] == pytest.approx(-math.log(1e-15) / 2)
    assert m["per_class"]["c"]["support"] == 0
    # macro-F1 skips "c" (never true, never predicted): a has P=1/2 R=1 F1=2/3, b has F1=0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def _ece_loop(y, p, n_bins):
    """Independent ECE: explicit (lo, hi] intervals, first bin closed at 0."""
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if sel.any():
            total += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    k, n = 5, 300
    logits = rng.normal(size=(n, k)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, k - 1, size=n)  # class 4 never true
    classes = [f"class{i}" for i in range(k)]
    m = classification_metrics(y, p, classes)
    pred = p.argmax(1)
    labels = list(range(k))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=labels))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=labels))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, c in enumerate(classes):
        assert m["per_class"][c] == pytest.approx(
            {"precision": prec[i], "recall": rec[i], "f1": f1[i], "support": sup[i]}
        )
    assert m["ece"] == pytest.approx(_ece_loop(y, p, 15))
    assert reliability_bins(y, p, 7)["ece"] == pytest.approx(_ece_loop(y, p, 7))


def test_perfect_predictions():
    y = np.array([0, 1, 2])
    m = classification_metrics(y, np.eye(3), CLASSES)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["ece"] == 0.0 and m["brier"] == 0.0
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "y, p, match",
    [
        (np.array([0, 1]), np.ones((3, 3)) / 3, "one label per row"),
        (np.array([0, 3]), np.ones((2, 3)) / 3, "outside 0..2"),
        (np.array([0.0, 1.0]), np.ones((2, 3)) / 3, "integer class indices"),
        (np.array([0, 1]), np.ones((2, 2)) / 2, "2 columns but there are 3 classes"),
        (np.array([0, 1]), np.array([[np.nan, 1, 0], [0, 1, 0]]), "NaN"),
    ],
)
def test_bad_inputs(y, p, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, p, CLASSES)


def test_accuracy_has_a_wilson_interval_equal_to_scipys():
    from scipy.stats import binomtest

    from transfuse.evaluate.metrics import wilson_interval

    for k, n in ((9, 12), (0, 10), (10, 10), (81, 100)):
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx([ci.low, ci.high], abs=1e-12)
    y = np.array([0, 1, 1, 0])
    m = classification_metrics(y, np.eye(2)[[0, 1, 0, 0]], ["a", "b"])
    assert m["accuracy"] == 0.75 and m["accuracy_ci95"] == pytest.approx(wilson_interval(3, 4))
