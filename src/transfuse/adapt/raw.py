"""A raw-input estimator (e.g. TF-IDF + logistic regression) as a candidate."""

from __future__ import annotations

from typing import Any

import numpy as np

from transfuse.adapt.cross_fit import Fit


def full_proba(est: Any, X: list, n_classes: int) -> np.ndarray:
    """``est.predict_proba(X)`` over all ``n_classes`` columns (classes a training fold lacked: 0)."""
    p = np.zeros((len(X), n_classes), np.float32)
    if len(X):
        p[:, est.classes_] = est.predict_proba(X)
    return p


class RawStrategy:
    """``X``/``X_test``: the decoded inputs (e.g. texts) of the training and test parts."""

    def __init__(self, estimator: Any, X: list, X_test: list, y: np.ndarray, n_classes: int):
        self.estimator, self.X, self.X_test, self.y, self.n_classes = estimator, X, X_test, y, n_classes

    def fit(self, rows: np.ndarray, seed: int, tag: str, chosen: dict[str, Any] | None = None) -> Fit:
        from sklearn.base import clone

        return Fit(clone(self.estimator).fit([self.X[i] for i in rows], self.y[rows]))

    def predict(self, fit: Fit, rows: np.ndarray | None) -> np.ndarray:
        X = self.X_test if rows is None else [self.X[i] for i in rows]
        return full_proba(fit.model, X, self.n_classes)

    def final_choice(self, chosen: list[dict[str, Any]]) -> dict[str, Any] | None:
        return None
