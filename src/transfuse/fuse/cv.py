"""Honest cross-validated scores for fusions.

Prediction-level fusions are fitted on out-of-fold (OOF) probabilities, so scoring one on the same
OOF probabilities it was fitted on is optimistic (it selects members that are lucky on exactly
those rows). :func:`cross_val_fusion` nests: for each outer fold it fits the fusion on the OTHER
folds' OOF rows and scores it on this fold's rows only. :func:`screen_members` and
:func:`align_members` prepare the candidates' OOF probabilities (drop broken ones with a reason,
put columns in one class order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, clone

from transfuse.adapt.cross_fit import oof_loop
from transfuse.errors import UserError
from transfuse.fuse.ensemble import accuracy, as_prob_stack, log_loss, make_ensemble

Folds = Sequence[tuple[np.ndarray, np.ndarray]]


def screen_members(
    oof_probs: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Split candidates into usable ones and ``{name: reason}`` for those excluded (NaN/inf values,
    wrong shape, rows not summing to one, or a shape different from the first usable member)."""
    kept: dict[str, np.ndarray] = {}
    excluded: dict[str, str] = {}
    for name, p in oof_probs.items():
        p = np.asarray(p, dtype=np.float64)
        ref = next(iter(kept.values()), None)
        if p.ndim != 2 or p.shape[1] < 2:
            excluded[name] = f"probabilities must have shape (n, C>=2); got {p.shape}"
        elif not np.isfinite(p).all():
            excluded[name] = (
                f"{int((~np.isfinite(p)).any(axis=1).sum())} rows hold NaN/inf probabilities"
            )
        elif (p < 0).any() or np.abs(p.sum(axis=1) - 1).max() > 1e-3:
            excluded[name] = "probabilities are negative or rows do not sum to 1"
        elif ref is not None and p.shape != ref.shape:
            excluded[name] = f"shape {p.shape} differs from the other members' {ref.shape}"
        else:
            kept[name] = p
    return kept, excluded


def align_members(
    members: Mapping[str, tuple[Sequence, np.ndarray]], classes: Sequence
) -> dict[str, np.ndarray]:
    """Reorder each member's columns from its own class list to ``classes``; refuse a member whose
    class set differs (naming the missing and extra classes)."""
    target = list(classes)
    out = {}
    for name, (own, p) in members.items():
        own = list(own)
        missing, extra = (
            sorted(set(target) - set(own), key=str),
            sorted(set(own) - set(target), key=str),
        )
        if missing or extra or len(own) != len(target):
            raise UserError(
                f"candidate {name!r} has classes that differ from the task's: missing {missing}, "
                f"extra {extra}; retrain it on the task's label set"
            )
        p = np.asarray(p)
        if p.ndim != 2 or p.shape[1] != len(own):
            raise UserError(
                f"candidate {name!r}: probabilities {p.shape} do not match its {len(own)} classes"
            )
        out[name] = p[:, [own.index(c) for c in target]]
    return out


def _check_folds(folds: Folds, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out, seen = [], np.zeros(n, dtype=bool)
    for k, (tr, va) in enumerate(folds):
        tr, va = np.asarray(tr, dtype=np.int64), np.asarray(va, dtype=np.int64)
        if len(va) == 0 or len(tr) == 0:
            raise UserError(f"fold {k} has an empty train or validation part")
        if (np.concatenate([tr, va]) >= n).any() or (np.concatenate([tr, va]) < 0).any():
            raise UserError(f"fold {k} holds row indices outside [0, {n})")
        if np.intersect1d(tr, va).size:
            raise UserError(f"fold {k}: train and validation rows overlap")
        if seen[va].any():
            raise UserError(f"fold {k}: validation rows overlap an earlier fold's")
        seen[va] = True
        out.append((tr, va))
    if len(out) < 2:
        raise UserError(f"need at least 2 folds; got {len(out)}")
    return out


def _score_folds(
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n: int,
    n_classes: int,
    y,
    folds: Folds,
) -> dict:
    folds = _check_folds(folds, n)
    oof = oof_loop(lambda k, tr, va: fit_predict(tr, va), folds, n, n_classes)
    scores = [accuracy(oof[va], y[va]) for _, va in folds]
    losses = [log_loss(oof[va], y[va]) for _, va in folds]
    covered = ~np.isnan(oof[:, 0])
    return {
        "cv_scores": scores,
        "cv_mean": float(np.mean(scores)),
        "cv_std": float(np.std(scores)),
        "cv_log_losses": losses,
        "log_loss": log_loss(oof[covered], y[covered]),
        "oof_probs": oof,
    }


def cross_val_fusion(
    method: str | BaseEstimator,
    oof_probs: Mapping[str, np.ndarray],
    y,
    folds: Folds,
    *,
    refit: bool = True,
    **params,
) -> dict:
    """Nested CV accuracy of a prediction-level fusion over the candidates' OOF probabilities.

    ``method``: an :data:`~transfuse.fuse.ensemble.ENSEMBLES` name (``params`` go to it) or an
    estimator (cloned). For each ``(train_idx, val_idx)`` the fusion is fitted on ``train_idx``
    rows and scored on ``val_idx`` rows. Returns ``cv_scores`` (accuracy per fold), ``cv_mean``,
    ``cv_std``, ``cv_log_losses``, ``log_loss`` (over all validation rows), ``oof_probs`` (the
    fusion's own nested OOF probabilities, ``(n, C)``, NaN on rows in no validation fold),
    ``members`` and, with ``refit``, ``estimator``: the fusion fitted on all rows (what ships).
    """
    if not oof_probs:
        raise UserError("cross_val_fusion needs at least one member's OOF probabilities")
    names = list(oof_probs)
    P = as_prob_stack([oof_probs[k] for k in names])
    n, c = P.shape[1:]
    y = np.asarray(y)
    if y.shape != (n,):
        raise UserError(f"y must hold one label per OOF row ({n}); got shape {y.shape}")

    def fit_predict(tr, va):
        return make_ensemble(method, **params).fit(P[:, tr], y[tr]).predict_proba(P[:, va])

    out = _score_folds(fit_predict, n, c, y, folds)
    out["members"] = names
    if refit:
        out["estimator"] = make_ensemble(method, **params).fit(P, y)
    return out


def cross_val_features(
    estimator: BaseEstimator, blocks, y, folds: Folds, *, n_classes: int | None = None
) -> dict:
    """Plain CV of a feature-level fusion (or any classifier over ``blocks``: a dict or list of
    ``(n, d_i)`` arrays, or one array). Same keys as :func:`cross_val_fusion` minus ``members``.
    ``n_classes`` defaults to ``max(y) + 1`` (labels are class indices)."""
    y = np.asarray(y)
    is_dict = isinstance(blocks, Mapping)
    items = (
        list(blocks.values())
        if is_dict
        else (list(blocks) if isinstance(blocks, list) else [blocks])
    )
    n = len(y)
    c = int(n_classes if n_classes is not None else y.max() + 1)

    def take(idx):
        parts = [np.asarray(b)[idx] for b in items]
        if is_dict:
            return dict(zip(blocks, parts, strict=True))
        return parts if isinstance(blocks, list) else parts[0]

    def fit_predict(tr, va):
        est = clone(estimator)
        if "n_classes" in est.get_params():
            est.set_params(n_classes=c)
        est.fit(take(tr), y[tr])
        p = np.zeros((len(va), c))
        p[:, np.asarray(est.classes_, dtype=np.int64)] = est.predict_proba(take(va))
        return p

    return _score_folds(fit_predict, n, c, y, folds)
