"""Prediction-level fusion: estimators over the members' class-probability arrays.

Every ensemble takes ``P``: an array ``(n_models, n, C)`` or a list of ``(n, C)`` arrays whose
column ``c`` is the probability of class ``c``, and labels ``y`` as class indices in ``[0, C)``.
``fit(P, y)`` learns the combination (weights, a selection, a meta-learner) from *out-of-fold*
probabilities; ``predict_proba(P)`` combines new ones. Members are prefit by construction (they were
trained elsewhere); an ensemble given its ``weights=`` (or a fitted ``meta_learner=``) is prefit too
and needs no ``fit``. Honest scores come from :func:`transfuse.fuse.cv.cross_val_fusion`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from transfuse.errors import UserError
from transfuse.registry import Registry

ENSEMBLES: Registry[type] = Registry("ensemble method")

EPS = 1e-12


def as_prob_stack(P, n_members: int | None = None) -> np.ndarray:
    """Validate member probabilities and return them as one ``(n_models, n, C)`` float array."""
    if isinstance(P, dict):
        raise UserError(
            "pass member probabilities as a list or array; got a dict (use list(d.values()))"
        )
    if isinstance(P, np.ndarray):
        arr = P
    else:
        shapes = {np.shape(p) for p in P}
        if len(shapes) > 1:
            raise UserError(
                f"member probability arrays differ in shape {sorted(shapes)}; align them to (n, C)"
            )
        arr = np.stack([np.asarray(p) for p in P]) if len(P) else np.empty((0, 0, 0))
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[2] < 2:
        raise UserError(
            f"member probabilities must have shape (n_models>=1, n, C>=2); got {arr.shape}"
        )
    arr = arr.astype(np.float64, copy=False)
    bad = [k for k in range(arr.shape[0]) if not np.isfinite(arr[k]).all()]
    if bad:
        raise UserError(f"member(s) {bad} have NaN or infinite probabilities; exclude them")
    if (arr < 0).any() or np.abs(arr.sum(axis=2) - 1.0).max() > 1e-3:
        raise UserError("member probabilities must be non-negative and each row must sum to 1")
    if n_members is not None and arr.shape[0] != n_members:
        raise UserError(f"got {arr.shape[0]} members but the ensemble was fitted on {n_members}")
    return arr


def check_labels(y, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise UserError(f"y must be 1-D with one label per row ({n}); got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (n and (y.min() < 0 or y.max() >= n_classes)):
        raise UserError(f"y must hold class indices in [0, {n_classes}) (the probability columns)")
    return y.astype(np.int64)


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, None))))


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(p, axis=1) == y))


def single_threaded(fn):
    """Run ``fn`` with one BLAS/OpenMP thread: these fits are small, and on a busy machine extra
    BLAS threads make them many times slower."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)

    return wrapper


def _check_weights(w, n_members: int | None = None) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise UserError(
            f"weights must be non-negative, finite, with a positive sum; got {w.tolist()}"
        )
    if n_members is not None and len(w) != n_members:
        raise UserError(f"got {len(w)} weights for {n_members} members")
    return w / w.sum()


class _ProbEnsemble(ClassifierMixin, BaseEstimator):
    """Shared plumbing: validation, ``classes_``, ``predict``."""

    def _start_fit(self, P, y) -> tuple[np.ndarray, np.ndarray]:
        P = as_prob_stack(P)
        y = check_labels(y, P.shape[1], P.shape[2])
        self.n_members_, self.classes_ = P.shape[0], np.arange(P.shape[2])
        return P, y

    def predict(self, P) -> np.ndarray:
        return np.argmax(self.predict_proba(P), axis=1)


class _WeightedAverage(_ProbEnsemble):
    """An ensemble whose output is ``sum_k w_k P_k``; ``weights=`` given means prefit."""

    def _weights(self) -> np.ndarray:
        if hasattr(self, "weights_"):
            return self.weights_
        if getattr(self, "weights", None) is not None:
            return _check_weights(self.weights)
        raise NotFittedError(
            f"{type(self).__name__} is not fitted; call fit(P, y) or pass weights="
        )

    def predict_proba(self, P) -> np.ndarray:
        w = self._weights()
        P = as_prob_stack(P, len(w))
        return np.tensordot(w, P, axes=1)


@ENSEMBLES.register("mean")
class MeanEnsemble(_WeightedAverage):
    """Unweighted average of the members' probabilities (soft voting); needs no fit.

    Reference: Dietterich, "Ensemble Methods in Machine Learning", MCS 2000,
    https://doi.org/10.1007/3-540-45014-9_1
    """

    @single_threaded
    def fit(self, P, y) -> MeanEnsemble:
        P, _ = self._start_fit(P, y)
        self.weights_ = np.full(P.shape[0], 1.0 / P.shape[0])
        return self

    def predict_proba(self, P) -> np.ndarray:
        return as_prob_stack(P).mean(axis=0)


@ENSEMBLES.register("weighted")
class WeightedEnsemble(_WeightedAverage):
    """Convex combination ``sum_k w_k P_k`` (``w >= 0``, ``sum w = 1``) minimising the log-loss.

    The objective is convex in ``w``; SLSQP solves it on the simplex with an analytic gradient.
    ``weights=`` given: prefit, ``fit`` only validates. Reference: Breiman, "Stacked Regressions",
    Machine Learning 24, 1996 (non-negative combination weights), https://doi.org/10.1007/BF00117832
    """

    def __init__(self, weights: Sequence[float] | None = None, max_iter: int = 200):
        self.weights = weights
        self.max_iter = max_iter

    @single_threaded
    def fit(self, P, y) -> WeightedEnsemble:
        P, y = self._start_fit(P, y)
        if self.weights is not None:
            self.weights_ = _check_weights(self.weights, P.shape[0])
            return self
        m = P.shape[0]
        true = P[:, np.arange(len(y)), y].T  # (n, m): each member's probability of the true class

        def f(w):
            mix = np.clip(true @ w, EPS, None)
            return -np.mean(np.log(mix)), -(true / mix[:, None]).mean(axis=0)

        res = minimize(
            f,
            np.full(m, 1.0 / m),
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * m,
            constraints=[
                {"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}
            ],
            options={"maxiter": self.max_iter, "ftol": 1e-12},
        )
        self.weights_ = _check_weights(np.clip(res.x, 0.0, None))
        self.loss_ = log_loss(np.tensordot(self.weights_, P, axes=1), y)
        return self


@ENSEMBLES.register("greedy")
class GreedyEnsemble(_WeightedAverage):
    """Greedy forward selection with replacement (Caruana et al. 2004).

    Start from the ``n_init`` best single members, then ``n_iter`` times add the member (repeats
    allowed) whose inclusion gives the best ``metric`` for the running average; ties go to the
    lowest member index. ``weights_`` are the selection counts normalised; ``selection_`` the order.
    Reference: Caruana, Niculescu-Mizil, Crew, Ksikes, "Ensemble Selection from Libraries of
    Models", ICML 2004, https://doi.org/10.1145/1015330.1015432
    """

    def __init__(
        self,
        n_iter: int = 25,
        n_init: int = 0,
        metric: Literal["log_loss", "accuracy"] = "log_loss",
        weights: Sequence[float] | None = None,
    ):
        self.n_iter = n_iter
        self.n_init = n_init
        self.metric = metric
        self.weights = weights

    def _loss(self, p: np.ndarray, y: np.ndarray) -> float:
        return log_loss(p, y) if self.metric == "log_loss" else -accuracy(p, y)

    @single_threaded
    def fit(self, P, y) -> GreedyEnsemble:
        P, y = self._start_fit(P, y)
        m = P.shape[0]
        if self.weights is not None:
            self.weights_ = _check_weights(self.weights, m)
            return self
        if self.metric not in ("log_loss", "accuracy"):
            raise UserError(
                f"GreedyEnsemble metric must be 'log_loss' or 'accuracy'; got {self.metric!r}"
            )
        if self.n_iter < 1 or not 0 <= self.n_init <= m:
            raise UserError(f"GreedyEnsemble needs n_iter >= 1 and 0 <= n_init <= {m}")
        singles = np.array([self._loss(P[k], y) for k in range(m)])
        selection = [int(k) for k in np.argsort(singles, kind="stable")[: self.n_init]]
        total = P[selection].sum(axis=0) if selection else np.zeros(P.shape[1:])
        for _ in range(self.n_iter):
            t = len(selection) + 1
            scores = [self._loss((total + P[k]) / t, y) for k in range(m)]
            best = int(np.argmin(scores))  # first minimum: lowest index wins ties
            selection.append(best)
            total += P[best]
        self.selection_ = selection
        self.weights_ = np.bincount(selection, minlength=m) / len(selection)
        return self


@ENSEMBLES.register("stacking")
class StackingEnsemble(_ProbEnsemble):
    """Stacking: a multinomial logistic regression on the members' (log-)probabilities.

    ``features="log"`` feeds ``log(clip(P, 1e-12))``, ``"proba"`` the probabilities (as
    scikit-learn's ``StackingClassifier(stack_method="predict_proba")`` does, minus its binary
    column drop); ``standardize`` puts a ``StandardScaler`` before the regression
    (log-probabilities are badly scaled: without it L-BFGS needs ~10x more iterations).
    ``C`` fixed, or ``C=None``: chosen from ``Cs`` by ``cv``-fold stratified inner CV on log-loss
    (ties: the smaller C), then refitted on all rows. ``meta_learner=``: a fitted classifier over
    the meta-features (prefit, no fit needed).
    References: Wolpert, "Stacked Generalization", Neural Networks 5, 1992,
    https://doi.org/10.1016/S0893-6080(05)80023-1 ; Ting & Witten, "Issues in Stacked
    Generalization", JAIR 10, 1999 (class probabilities as meta-features),
    https://doi.org/10.1613/jair.594
    """

    def __init__(
        self,
        C: float | None = None,
        Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
        cv: int = 5,
        features: Literal["log", "proba"] = "log",
        standardize: bool = True,
        max_iter: int = 1000,
        seed: int = 0,
        meta_learner=None,
    ):
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.features = features
        self.standardize = standardize
        self.max_iter = max_iter
        self.seed = seed
        self.meta_learner = meta_learner

    def _meta_features(self, P: np.ndarray) -> np.ndarray:
        if self.features not in ("log", "proba"):
            raise UserError(
                f"StackingEnsemble features must be 'log' or 'proba'; got {self.features!r}"
            )
        F = np.log(np.clip(P, EPS, None)) if self.features == "log" else P
        return np.concatenate(list(F), axis=1)  # (n, n_models * C), member-major like sklearn

    def _lr(self, C: float) -> BaseEstimator:
        lr = LogisticRegression(C=C, max_iter=self.max_iter)
        return make_pipeline(StandardScaler(), lr) if self.standardize else lr

    def _inner_cv_loss(self, X: np.ndarray, y: np.ndarray, C: float, n_classes: int) -> float:
        counts = np.bincount(y)
        n_splits = min(self.cv, max(2, int(counts[counts > 0].min())))
        skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.seed)
        out = np.zeros((len(y), n_classes))
        with warnings.catch_warnings():  # a rare class in fewer folds than n_splits is fine here
            warnings.simplefilter("ignore", UserWarning)
            splits = list(skf.split(X, y))
        for tr, va in splits:
            lr = self._lr(C).fit(X[tr], y[tr])
            out[np.ix_(va, lr.classes_)] = lr.predict_proba(X[va])
        return log_loss(out, y)

    @single_threaded
    def fit(self, P, y) -> StackingEnsemble:
        P, y = self._start_fit(P, y)
        if self.meta_learner is not None:
            self.meta_ = self.meta_learner
            return self
        X = self._meta_features(P)
        if self.C is not None:
            self.C_ = float(self.C)
        else:
            if not len(self.Cs):
                raise UserError("StackingEnsemble needs C or a non-empty Cs grid")
            losses = [self._inner_cv_loss(X, y, C, P.shape[2]) for C in sorted(self.Cs)]
            self.cv_losses_ = dict(zip(sorted(self.Cs), losses, strict=True))
            self.C_ = float(sorted(self.Cs)[int(np.argmin(losses))])
        self.meta_ = self._lr(self.C_).fit(X, y)
        return self

    def predict_proba(self, P) -> np.ndarray:
        meta = getattr(self, "meta_", None)
        meta = self.meta_learner if meta is None else meta
        if meta is None:
            raise NotFittedError(
                "StackingEnsemble is not fitted; call fit(P, y) or pass meta_learner="
            )
        P = as_prob_stack(P, getattr(self, "n_members_", None))
        out = np.zeros(P.shape[1:])
        out[:, np.asarray(meta.classes_)] = meta.predict_proba(self._meta_features(P))
        return out


def make_ensemble(method: str | BaseEstimator, **params) -> BaseEstimator:
    """A fresh ensemble: a registry name plus parameters, or an unfitted clone of an estimator."""
    if isinstance(method, str):
        return ENSEMBLES.get(method)(**params)
    return clone(method).set_params(**params)
