"""The one cross-fit loop: every candidate's CV comes from here.

For each outer fold the strategy is fitted on the fold's training rows only, and anything it
chooses (epochs, a checkpoint, hyperparameters, a distillation setting) is chosen inside those
rows (an inner split or inner folds); the fold's validation rows are predicted once, by a model
that never saw them. The shipped model is then fitted on all training rows with the choice the
folds made (:meth:`Strategy.final_choice`), and predicts the test part once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from transfuse import budget
from transfuse.faults import fault_point

Folds = Sequence[tuple[np.ndarray, np.ndarray]]


def score(y: np.ndarray, proba: np.ndarray, metric: str) -> float:
    """``accuracy`` or ``macro_f1`` of the argmax of ``proba`` (all ``proba.shape[1]`` classes)."""
    pred = proba.argmax(1)
    if metric == "macro_f1":
        from sklearn.metrics import f1_score

        return float(f1_score(y, pred, average="macro", labels=np.arange(proba.shape[1]), zero_division=0))
    return float((pred == y).mean())


@dataclass
class Fit:
    """A fitted model, what its inner selection chose (e.g. ``{"epochs": 3}``) and its curves."""

    model: Any
    chosen: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class Strategy(Protocol):
    """How one candidate adapts a model to the rows of the training part it is given.

    ``fit(rows, seed, tag, chosen=None)`` selects whatever it selects inside ``rows``;
    ``fit(rows, ..., chosen=c)`` refits with a choice made before. ``predict(fit, rows)`` gives
    probabilities for training rows (``rows=None``: for the test part)."""

    def fit(self, rows: np.ndarray, seed: int, tag: str, chosen: dict[str, Any] | None = None) -> Fit: ...

    def predict(self, fit: Fit, rows: np.ndarray | None) -> np.ndarray: ...

    def final_choice(self, chosen: list[dict[str, Any]]) -> dict[str, Any] | None: ...


def oof_loop(fit_predict: Callable[[int, np.ndarray, np.ndarray], np.ndarray], folds: Folds, n: int,
             n_classes: int) -> np.ndarray:
    """Out-of-fold probabilities: ``fit_predict(k, train_rows, val_rows)`` per fold, rows in no
    validation fold left NaN."""
    oof = np.full((n, n_classes), np.nan)
    for k, (tr, va) in enumerate(folds):
        oof[va] = fit_predict(k, np.asarray(tr), np.asarray(va))
    return oof


@dataclass
class CrossFit:
    oof: np.ndarray
    scores: list[float]
    test: np.ndarray
    final: Fit
    fold_chosen: list[dict[str, Any]]
    history: list[dict[str, Any]]

    @property
    def selected(self) -> dict[str, Any] | None:
        if not any(self.fold_chosen) and not self.final.chosen:
            return None
        return {"folds": self.fold_chosen, "final": self.final.chosen}


def cross_fit(strategy: Strategy, y: np.ndarray, folds: Folds, n_classes: int, metric: str,
              seed: int) -> CrossFit:
    """Score ``strategy`` on ``folds`` (outer folds, scored once each), then fit what ships."""
    fits: list[Fit] = []
    started = time.time()

    def fit_predict(k: int, tr: np.ndarray, va: np.ndarray) -> np.ndarray:
        fault_point("fold")
        # under a time limit: stop when k folds' pace says the rest (and the refit) cannot finish
        budget.check_projection(f"fold {k + 1} of {len(folds)}", k, len(folds) + 1, started)
        f = strategy.fit(tr, seed + k, f"fold{k}")
        fits.append(f)
        return strategy.predict(f, va)

    oof = oof_loop(fit_predict, folds, len(y), n_classes)
    scores = [score(y[va], oof[va], metric) for _, va in folds]
    chosen = [f.chosen for f in fits]
    budget.check_projection("refit", len(folds), len(folds) + 1, started)
    final = strategy.fit(np.arange(len(y)), seed, "final", strategy.final_choice(chosen))
    history = [{"fold": k, **h} for k, f in enumerate(fits) for h in f.history]
    return CrossFit(oof=np.nan_to_num(oof).astype(np.float32), scores=scores,
                    test=np.asarray(strategy.predict(final, None), np.float32), final=final,
                    fold_chosen=chosen, history=history)


def inner_folds(y: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds inside one outer fold's training rows (at least 2, at most the rarest
    class's count); indices into ``y``."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = max(2, min(n_splits, int(counts[counts > 0].min())))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def inner_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified hold-out of ``fraction`` of the rows (indices into ``y``): the inner
    validation split that fine-tuning selects its epoch on. At least one row on each side;
    stratified when every class has 2 rows or more."""
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    n = len(y)
    n_val = min(n - 1, max(1, int(round(fraction * n))))
    counts = np.bincount(y)
    present = counts[counts > 0]
    stratify = present.min() >= 2 and len(present) <= n_val <= n - len(present)
    splitter = (StratifiedShuffleSplit if stratify else ShuffleSplit)(1, test_size=n_val, random_state=seed)
    tr, va = next(splitter.split(np.zeros(n), y if stratify else None))
    return np.sort(tr), np.sort(va)
