"""Linear probe: a head fitted on a frozen backbone's cached features."""

from __future__ import annotations

from typing import Any

import numpy as np

from transfuse.adapt.cross_fit import Fit
from transfuse.config import HeadConfig


def make_head(head: HeadConfig, n_classes: int, seed: int) -> Any:
    """An unfitted :class:`~transfuse.train.heads.HeadClassifier` with ``head``'s settings."""
    from transfuse.train.heads import HeadClassifier

    return HeadClassifier.from_config(head.model_copy(update={"seed": seed}), n_classes=n_classes)


class ProbeStrategy:
    """``X``/``X_test``: the cached features of the training and test parts; nothing is selected
    (the head's settings are fixed, or searched by :mod:`transfuse.search`)."""

    def __init__(self, head: HeadConfig, X: np.ndarray, X_test: np.ndarray, y: np.ndarray, n_classes: int):
        self.head, self.X, self.X_test, self.y, self.n_classes = head, X, X_test, y, n_classes

    def fit(self, rows: np.ndarray, seed: int, tag: str, chosen: dict[str, Any] | None = None) -> Fit:
        return Fit(make_head(self.head, self.n_classes, seed).fit(self.X[rows], self.y[rows]))

    def predict(self, fit: Fit, rows: np.ndarray | None) -> np.ndarray:
        X = self.X_test if rows is None else self.X[rows]
        return fit.model.predict_proba(X) if len(X) else np.zeros((0, self.n_classes), np.float32)

    def final_choice(self, chosen: list[dict[str, Any]]) -> dict[str, Any] | None:
        return None
