"""What a trial scores: the mean CV score of a head on cached features, or of a fine-tuning.

Each fold's running mean is reported as an intermediate value, so the median pruner stops weak
trials after a fold or two.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.adapt.cross_fit import score
from transfuse.config import ParamSpace
from transfuse.faults import fault_point
from transfuse.search.study import suggest


def report_fold(trial: Any, scores: list[float], last: bool) -> None:
    """Report the running CV mean after a fold; prune (keeping the fold scores) when Optuna says so."""
    import optuna

    trial.report(float(np.mean(scores)), step=len(scores) - 1)
    if not last and trial.should_prune():
        trial.set_user_attr("fold_scores", scores)
        raise optuna.TrialPruned()


def head_objective(X: np.ndarray, y: np.ndarray, folds: list, head_cfg: Any, space: dict[str, ParamSpace],
                   metric: str, seed: int, fast: bool = True, tol: float = 1e-4,
                   n_classes: int | None = None) -> Callable[[Any], float]:
    """CV score of a head (HeadConfig + the trial's parameters) on cached features ``X``.

    ``fast``: linear L-BFGS heads are fitted by a per-fold :class:`LinearHeadProblem` (features
    standardised and rotated once for the whole study, float32, warm starts, gradient
    tolerance ``tol``); other heads (MLP, Adam) and ``fast=False`` fit a :class:`HeadClassifier`
    per fold, as the pipeline does. ``n_classes``: default ``y.max() + 1``."""

    from transfuse.train.heads import (
        HeadClassifier,
        LinearHeadProblem,
        resolve_optimizer,
    )

    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    problems: dict[tuple[int, bool], LinearHeadProblem] = {}

    def fold_proba(cfg: Any, k: int, tr: np.ndarray, va: np.ndarray) -> np.ndarray:
        if fast and cfg.kind == "linear" and resolve_optimizer(cfg.optimizer, cfg.dropout, True) == "lbfgs":
            key = (k, bool(cfg.standardize))
            if key not in problems:
                problems[key] = LinearHeadProblem(X[tr], y[tr], X[va], n_classes, standardize=key[1], tol=tol)
            return problems[key].fit_proba(cfg.weight_decay, cfg.label_smoothing, cfg.class_weight, cfg.max_iter)
        head = HeadClassifier.from_config(cfg.model_copy(update={"seed": seed + k}), n_classes=n_classes)
        return head.fit(X[tr], y[tr]).predict_proba(X[va])

    def objective(trial: Any) -> float:
        params = {k: suggest(trial, k, s) for k, s in space.items()}
        cfg = head_cfg.model_copy(update=params)
        scores = []
        for k, (tr, va) in enumerate(folds):
            scores.append(score(y[va], fold_proba(cfg, k, tr, va), metric))
            report_fold(trial, scores, last=k == len(folds) - 1)
            if k == 0:
                fault_point("trial")  # the kill tests: a worker dies mid-trial
        trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores))

    return objective


def apply_augment_strength(augment: Any, modality: str, s: float) -> Any:
    """Scale the modality's augmentation: 0 = off, 1 = strong (image jitter/rotation/erasing,
    audio noise/shift/gain/SpecAugment probabilities)."""
    if augment is None:
        return None
    if modality == "image":
        return augment.model_copy(update={"enabled": s > 0, "color_jitter": 0.4 * s, "rotation": 15.0 * s,
                                          "random_erasing": 0.25 * s})
    if modality == "audio":
        return augment.model_copy(update={"enabled": s > 0, "noise_prob": s, "shift_prob": s,
                                          "gain_prob": s, "specaugment_prob": s})
    return augment


def finetune_objective(backbone: Any, train: Any, folds: list, n_classes: int, cfg: Any,
                       head_init_fn: Callable[[np.ndarray], Any] | None, space: dict[str, ParamSpace],
                       work: Path) -> Callable[[Any], float]:
    """CV score of fine-tuning ``backbone`` with FinetuneConfig + the trial's parameters."""

    from transfuse.train.finetune import finetune

    def objective(trial: Any) -> float:
        params = {k: suggest(trial, k, s) for k, s in space.items()}
        strength = params.pop("augment_strength", None)
        ft = cfg.train.finetune.model_copy(update=params)
        aug = getattr(cfg.augment, train.modality, None)
        if strength is not None:
            aug = apply_augment_strength(aug, train.modality, float(strength))
        y, scores = train.labels, []
        for k, (tr, va) in enumerate(folds):
            init = head_init_fn(tr) if head_init_fn is not None else None
            res = finetune(copy.deepcopy(backbone), train.subset(tr), train.subset(va), n_classes, ft,
                           work / f"trial{trial.number}" / f"fold{k}", head_init=init, augment=aug,
                           seed=cfg.seed + k, progress=False)
            scores.append(score(y[va], res.val_proba, cfg.evaluate.metric))
            report_fold(trial, scores, last=k == len(folds) - 1)
            if k == 0:
                fault_point("trial")  # the kill tests: a worker dies mid-trial
        trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores))

    return objective
