"""The one cross-fit loop: every candidate's CV comes from here.

For each outer fold the strategy is fitted on the fold's training rows only, and anything it
chooses (epochs, a checkpoint, hyperparameters, a distillation setting) is chosen inside those
rows (an inner split or inner folds); the fold's validation rows are predicted once, by a model
that never saw them. The shipped model is then fitted on all training rows with the choice the
folds made (:meth:`Strategy.final_choice`), and predicts the test part once.

With ``bag`` the fold models also predict the test part (their mean is the fold bag's test
probabilities) before the refit, and the refit becomes optional: left out (``refit=False``, the
time-limit plan) or stopped by the time limit, it is reported in :attr:`CrossFit.refit_skipped`
instead of dropping the candidate, whose folds are all scored. Under a time limit the plan may
also run only the first ``n_folds`` outer folds (the bag ships; the rows of the folds not run are
left out of the scores, their out-of-fold probabilities zero: :attr:`CrossFit.folds_run`), and a
planned bag without the refit keeps the folds that finished when the deadline stops it (a bag
of fewer folds); it starts each next fold that its measured pace says still fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from transfuse import budget
from transfuse.budget import TimeLimitReached
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
    """What :func:`cross_fit` made. ``final``/``test``: the refit and its test probabilities (None
    when ``refit_skipped`` says why not); ``folds``/``fold_test``: with ``bag``, the fold fits and
    the mean of their test probabilities; ``fold_seconds``: the time until those were ready."""

    oof: np.ndarray
    scores: list[float]
    test: np.ndarray | None
    final: Fit | None
    fold_chosen: list[dict[str, Any]]
    history: list[dict[str, Any]]
    folds: list[Fit] = field(default_factory=list)
    fold_test: np.ndarray | None = None
    fold_seconds: float = 0.0
    refit_skipped: str | None = None
    folds_run: int | None = None  # the first folds_run of the folds_total outer folds ran (None: all)
    folds_total: int = 0

    @property
    def selected(self) -> dict[str, Any] | None:
        final = self.final.chosen if self.final is not None else {}
        if not any(self.fold_chosen) and not final:
            return None
        return {"folds": self.fold_chosen, "final": final}


def cross_fit(strategy: Strategy, y: np.ndarray, folds: Folds, n_classes: int, metric: str,
              seed: int, *, bag: bool = False, refit: bool = True, n_folds: int | None = None) -> CrossFit:
    """Score ``strategy`` on ``folds`` (outer folds, scored once each), then fit what ships.
    ``bag``: keep the fold fits and their mean test probabilities, and let the refit be left out
    (``refit=False``) or stopped by the time limit (see the module's docstring); ``n_folds``
    (with ``bag``, no refit): run and score the first ``n_folds`` folds only."""
    fits: list[Fit] = []
    done: list[tuple[np.ndarray, np.ndarray]] = []  # (validation rows, their probabilities) per fold
    started = time.time()
    k_all = len(folds)
    if n_folds is not None and n_folds < k_all:
        if not bag or refit:
            raise ValueError("cross_fit: n_folds < len(folds) needs bag=True and refit=False")
        folds = list(folds)[:n_folds]
    # under a time limit the folds are paced against what must follow them: the refit, unless
    # the fold bag can ship without it; a bag without its refit keeps what finished, so it runs
    # each next fold that still fits (not only while all the rest fit)
    total = len(folds) + (0 if bag else 1)
    one_by_one = bag and not refit

    def fit_predict(k: int, tr: np.ndarray, va: np.ndarray) -> np.ndarray:
        fault_point("fold")
        # under a time limit: stop when k folds' pace says the rest (or the next fold) cannot finish
        budget.check_projection(f"fold {k + 1} of {k_all}", k, k + 1 if one_by_one else total, started)
        f = strategy.fit(tr, seed + k, f"fold{k}")
        p = strategy.predict(f, va)
        fits.append(f)
        done.append((va, p))
        return p

    try:
        oof = oof_loop(fit_predict, folds, len(y), n_classes)
    except TimeLimitReached as e:
        # a planned bag without its refit keeps the folds that finished: a bag of fewer folds
        if not (bag and not refit and fits):
            raise
        stopped = f"stopped at the time limit ({e.where}) after {len(fits)} of {k_all} folds"
        folds = list(folds)[: len(fits)]
        oof = np.full((len(y), n_classes), np.nan)
        for va, p in done:
            oof[va] = p
    else:
        stopped = None
    scores = [score(y[va], oof[va], metric) for _, va in folds]
    chosen = [f.chosen for f in fits]
    history = [{"fold": k, **h} for k, f in enumerate(fits) for h in f.history]
    out = CrossFit(oof=np.nan_to_num(oof).astype(np.float32), scores=scores, test=None, final=None,
                   fold_chosen=chosen, history=history, folds_run=len(folds) if len(folds) < k_all else None,
                   folds_total=k_all)
    if bag:
        out.folds = fits
        out.fold_test = np.mean([strategy.predict(f, None) for f in fits], axis=0).astype(np.float32)
        out.fold_seconds = time.time() - started
        if not refit:
            out.refit_skipped = stopped or "left out by the time-limit plan" + (
                f" (ran {out.folds_run} of {k_all} folds)" if out.folds_run is not None else "")
            return out
    try:
        budget.check_projection("refit", len(folds), len(folds) + 1, started)
        out.final = strategy.fit(np.arange(len(y)), seed, "final", strategy.final_choice(chosen))
    except TimeLimitReached as e:
        if not bag:
            raise
        out.refit_skipped = f"stopped at the time limit ({e.where})"
        return out
    out.test = np.asarray(strategy.predict(out.final, None), np.float32)
    return out


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
