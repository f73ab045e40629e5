"""Classification metrics on predicted probabilities: accuracy, macro-F1, log-loss, ECE, Brier.

Every function takes integer labels ``y_true`` (indices into ``classes``) and a probability matrix
``proba`` of shape (n_examples, n_classes) and returns plain Python numbers and lists, so the
result goes straight into ``report.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LOG_LOSS_EPS = 1e-15
ECE_BINS = 15


def _check(y_true: Any, proba: Any, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert inputs; raises ValueError naming the mismatch."""
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"proba must be a 2-D array (n_examples, n_classes); got shape {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"y_true must be 1-D with one label per row of proba; got {y.shape} vs {p.shape}")
    if len(y) == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices; got dtype {y.dtype}")
    k = p.shape[1] if n_classes is None else n_classes
    if p.shape[1] != k:
        raise ValueError(f"proba has {p.shape[1]} columns but there are {k} classes")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds labels outside 0..{k - 1}: min {y.min()}, max {y.max()}")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba holds NaN or infinite values")
    return y.astype(np.int64), p


def reliability_bins(y_true: Any, proba: Any, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-label reliability: equal-width confidence bins over [0, 1].

    A prediction with confidence c falls in bin b when edges[b] < c <= edges[b+1] (c = 0 goes to
    bin 0). Returns ``edges`` (n_bins+1), per-bin ``count``, mean ``confidence`` and ``accuracy``
    (None for empty bins) and ``ece`` = sum_b count_b / n * |accuracy_b - confidence_b|.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    y, p = _check(y_true, proba)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    nz = count > 0
    mean_conf = np.where(nz, conf_sum / np.maximum(count, 1), np.nan)
    mean_acc = np.where(nz, acc_sum / np.maximum(count, 1), np.nan)
    ece = float(np.sum(count[nz] / len(y) * np.abs(mean_acc[nz] - mean_conf[nz])))
    as_list = lambda a: [float(v) if ok else None for v, ok in zip(a, nz)]  # noqa: E731
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": as_list(mean_conf),
        "accuracy": as_list(mean_acc),
        "ece": ece,
    }


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class (n_classes x n_classes)."""
    y = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> list[float]:
    """The Wilson score interval (95% by default) of a proportion ``correct / n``: unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0 or n correct. Wilson (1927),
    https://doi.org/10.1080/01621459.1927.10502953. ``[nan, nan]`` for n = 0."""
    if n <= 0:
        return [float("nan"), float("nan")]
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def classification_metrics(y_true: Any, proba: Any, classes: Sequence[str]) -> dict[str, Any]:
    """All test metrics for one candidate.

    - ``accuracy``: fraction of rows whose arg-max is the true label; ``accuracy_ci95``: its 95%
      Wilson score interval (the test set is a sample: 0.75 on 12 examples is [0.47, 0.91]).
    - ``macro_f1``: unweighted mean F1 over the classes that occur in ``y_true`` or in the
      predictions (scikit-learn's default label set); a class never seen nor predicted is skipped.
    - ``log_loss``: mean -log p(true class), rows renormalised and p clipped to [1e-15, 1], over all
      ``classes`` even those absent from ``y_true``.
    - ``ece``: top-label expected calibration error, 15 equal-width confidence bins.
    - ``brier``: mean over rows of sum_k (p_k - onehot_k)^2 (range 0..2).
    - ``confusion_matrix``: rows true, columns predicted; ``per_class``: precision, recall, f1,
      support keyed by class name (0.0 where undefined).
    """
    classes = [str(c) for c in classes]
    k = len(classes)
    y, p = _check(y_true, proba, k)
    p = p / np.clip(p.sum(axis=1, keepdims=True), LOG_LOSS_EPS, None)
    n = len(y)
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    onehot = np.eye(k)[y]
    p_true = np.clip(p[np.arange(n), y], LOG_LOSS_EPS, 1.0)
    return {
        "n": int(n),
        "accuracy": float(np.mean(pred == y)),
        "accuracy_ci95": wilson_interval(int(np.sum(pred == y)), int(n)),
        "macro_f1": float(f1[present].mean()),
        "log_loss": float(-np.mean(np.log(p_true))),
        "ece": reliability_bins(y, p, ECE_BINS)["ece"],
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "confusion_matrix": cm.tolist(),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }
