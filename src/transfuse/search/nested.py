"""Nested CV for searched candidates: the search re-run inside each outer fold.

The best trial of a search is the best of n scores on the run's folds, so its score is optimistic;
a candidate fitted with those parameters and scored on the same folds inherits that optimism. Here
each outer fold's model is fitted with parameters that a search on the fold's training rows chose
(:class:`NestedSearch`: the head study with inner folds on the searched backbone's features, then,
when the search had a fine-tuning stage, the fine-tuning study on an inner split), so the outer
fold scores the whole procedure once. What ships is fitted on all training rows with the full
search's best parameters (those of ``search/search.json``). Every candidate that uses the searched
parameters (every backbone's probe, fine-tuning and LP-FT) is wrapped; each outer fold's search
runs once and is shared by them.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.adapt.cross_fit import Fit, inner_folds, inner_split
from transfuse.adapt.finetune import FinetuneStrategy, lp_ft_head
from transfuse.adapt.probe import ProbeStrategy, make_head
from transfuse.config import TRAINING_STRATEGIES, ExperimentConfig, HeadConfig, SearchConfig
from transfuse.search.objectives import apply_augment_strength, finetune_objective, head_objective
from transfuse.search.run import SearchInputs, lp_ft_init
from transfuse.search.study import best_trial, make_sampler, open_study, run_study, trial_budget


def _key(stage: str, rows: np.ndarray, seed: int) -> tuple[str, int, str]:
    return stage, seed, hashlib.sha1(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


@dataclass
class HeadSearch:
    """The head stage of :func:`~transfuse.search.run.run_search` on some rows: an in-memory study
    (same sampler, space, trials, pruner and fast heads) over ``folds`` inner folds of the rows."""

    X: np.ndarray
    y: np.ndarray
    head: HeadConfig
    sc: SearchConfig
    n_trials: int
    metric: str
    folds: int
    n_classes: int

    def best(self, rows: np.ndarray, seed: int) -> dict[str, Any]:
        """The best parameters of a search on ``rows`` only ({} when no trial completed)."""
        sc, Xr, yr = self.sc, self.X[rows], self.y[rows]
        study = open_study(None, "heads", make_sampler(sc.sampler, sc.space, seed, sc.grid_points), sc.pruner, False)
        run_study(study, head_objective(Xr, yr, inner_folds(yr, self.folds, seed), self.head, sc.space, self.metric,
                                        seed, fast=sc.fast_heads, tol=sc.head_tol, n_classes=self.n_classes),
                  trial_budget(sc.sampler, self.n_trials, sc.space, sc.grid_points), sc.timeout)
        best = best_trial(study)
        return dict(best.params) if best is not None else {}


@dataclass
class FinetuneSearch:
    """The fine-tuning stage on some rows: an in-memory study of ``search.finetune_trials`` trials,
    each fine-tuning ``backbone`` on an inner split of the rows (validation: ``1/folds`` of them);
    LP-FT trials start from a probe on ``X`` with the head chosen on the same rows."""

    cfg: ExperimentConfig  # the unsearched config
    backbone: Any
    train: Any
    X: np.ndarray
    folds: int
    workdir: Path

    def best(self, rows: np.ndarray, seed: int, head: HeadConfig) -> dict[str, Any]:
        from transfuse.train.heads import HeadClassifier

        sc, y, n_classes = self.cfg.search, self.train.labels, len(self.train.classes)
        itr, iva = inner_split(y[rows], 1.0 / self.folds, seed)

        def init_fn(tr: np.ndarray) -> Any:  # the probe LP-FT starts from, as in the fit
            return HeadClassifier.from_config(lp_ft_head(head, self.cfg.train.finetune),
                                              n_classes=n_classes).fit(self.X[tr], y[tr]).to_linear()

        work = self.workdir / "_".join(map(str, _key("finetune", rows, seed)))[:60]
        shutil.rmtree(work, ignore_errors=True)  # an in-memory study cannot resume: start clean
        space = sc.finetune_space
        study = open_study(None, "finetune", make_sampler(sc.sampler, space, seed, sc.grid_points), sc.pruner, False)
        try:
            run_study(study, finetune_objective(self.backbone, self.train, [(rows[itr], rows[iva])], n_classes,
                                                self.cfg, init_fn if lp_ft_init(self.cfg, head) else None,
                                                space, work),
                      trial_budget(sc.sampler, sc.finetune_trials, space, sc.grid_points), sc.timeout)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # trial checkpoints: nothing ships from them
        best = best_trial(study)
        return dict(best.params) if best is not None else {}


@dataclass
class NestedSearch:
    """The search's stages (None: the stage did not run or chose nothing), the unsearched config
    the chosen parameters apply to, and the full search's best parameters (``final``:
    ``{"head": ..., "finetune": ...}``, what ships)."""

    cfg: ExperimentConfig
    heads: HeadSearch | None
    finetune: FinetuneSearch | None
    final: dict[str, dict[str, Any]]
    _cache: dict[tuple[str, int, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    def head_params(self, rows: np.ndarray, seed: int) -> dict[str, Any]:
        if self.heads is None:
            return {}
        key = _key("head", rows, seed)
        if key not in self._cache:
            self._cache[key] = self.heads.best(rows, seed)
        return dict(self._cache[key])

    def finetune_params(self, rows: np.ndarray, seed: int) -> dict[str, Any]:
        if self.finetune is None:
            return {}
        key = _key("finetune", rows, seed)
        if key not in self._cache:
            self._cache[key] = self.finetune.best(rows, seed, self.head_config(self.head_params(rows, seed)))
        return dict(self._cache[key])

    def head_config(self, params: dict[str, Any]) -> HeadConfig:
        return self.cfg.train.head.model_copy(update=params)

    def applies(self, strategy: str) -> bool:
        """Whether candidates of ``strategy`` use searched parameters (and need nesting)."""
        if strategy == "linear_probe":
            return self.heads is not None
        if strategy not in TRAINING_STRATEGIES:  # multilayer_probe: the configured head
            return False
        return self.finetune is not None or (strategy == "lp_ft" and self.heads is not None)

    def wrap(self, strategy: Any) -> Any:
        """The ``run_experiment(wrap=...)`` hook: a probe or fine-tuning strategy made nested."""
        if isinstance(strategy, ProbeStrategy) and self.applies("linear_probe"):
            return SearchedProbe(strategy, self)
        if isinstance(strategy, FinetuneStrategy) and self.applies(strategy.strategy):
            return SearchedFinetune(strategy, self)
        return strategy


def nested_search(cfg: ExperimentConfig, inputs: SearchInputs, result: dict[str, Any], workdir: Path
                  ) -> NestedSearch:
    """The search that :func:`~transfuse.search.run.run_search` ran (``result``) on ``cfg`` (the
    unsearched config), ready to re-run inside each outer fold: as many inner folds as the run has
    folds, the same number of trials; ``workdir`` holds the inner fine-tuning trials while they run."""
    train, k = inputs.data.train, len(inputs.data.folds)
    heads = None if result.get("best_head") is None else HeadSearch(
        inputs.X, train.labels, cfg.train.head, cfg.search, int(result.get("n_trials") or cfg.search.n_trials),
        cfg.evaluate.metric, k, len(train.classes))
    finetune = None if result.get("best_finetune") is None else FinetuneSearch(
        cfg, inputs.backbone, train, inputs.X, k, workdir)
    return NestedSearch(cfg, heads, finetune, {"head": dict(result.get("best_head") or {}),
                                               "finetune": dict(result.get("best_finetune") or {})})


class SearchedProbe:
    """A :class:`ProbeStrategy` whose head parameters a search inside the fit's rows chooses;
    ``chosen``: those parameters. The final fit uses the full search's best parameters."""

    def __init__(self, probe: ProbeStrategy, search: NestedSearch):
        self.probe, self.search = probe, search

    def fit(self, rows: np.ndarray, seed: int, tag: str, chosen: dict[str, Any] | None = None) -> Fit:
        params = self.search.head_params(rows, seed) if chosen is None else dict(chosen)
        p = self.probe
        return Fit(make_head(self.search.head_config(params), p.n_classes, seed).fit(p.X[rows], p.y[rows]), params)

    def predict(self, fit: Fit, rows: np.ndarray | None) -> np.ndarray:
        return self.probe.predict(fit, rows)

    def final_choice(self, chosen: list[dict[str, Any]]) -> dict[str, Any] | None:
        return dict(self.search.final.get("head") or {})


class SearchedFinetune:
    """A :class:`FinetuneStrategy` (fine-tuning or LP-FT) refitted with the head and fine-tuning
    parameters a search inside the fit's rows chooses; its epoch is then chosen as the wrapped
    strategy chooses it. ``chosen``: ``{"head": ..., "finetune": ..., "epochs": ...}``."""

    def __init__(self, base: FinetuneStrategy, search: NestedSearch):
        self.base, self.search = base, search

    def _strategy(self, head: dict[str, Any], finetune: dict[str, Any]) -> FinetuneStrategy:
        b, cfg, ft = self.base, self.search.cfg, dict(finetune)
        strength = ft.pop("augment_strength", None)
        modality = b.train.modality
        augment = getattr(cfg.augment, modality, None)
        if strength is not None:
            augment = apply_augment_strength(augment, modality, float(strength))
        return FinetuneStrategy(b.strategy, b.backbone, b.train, b.test, cfg.train.finetune.model_copy(update=ft),
                                self.search.head_config(head), b.workdir, features=b.features, augment=augment,
                                batch_size=b.batch_size, progress=b.progress)

    def fit(self, rows: np.ndarray, seed: int, tag: str, chosen: dict[str, Any] | None = None) -> Fit:
        if chosen is None:
            head, ft, inner = self.search.head_params(rows, seed), self.search.finetune_params(rows, seed), None
        else:
            head, ft = chosen.get("head") or {}, chosen.get("finetune") or {}
            inner = {"epochs": chosen["epochs"]} if "epochs" in chosen else None
        f = self._strategy(head, ft).fit(rows, seed, tag, inner)
        return Fit(f.model, {"head": head, "finetune": ft, **f.chosen}, f.history)

    def predict(self, fit: Fit, rows: np.ndarray | None) -> np.ndarray:
        return self.base.predict(fit, rows)

    def final_choice(self, chosen: list[dict[str, Any]]) -> dict[str, Any] | None:
        return {"head": dict(self.search.final.get("head") or {}),
                "finetune": dict(self.search.final.get("finetune") or {}),
                **(self.base.final_choice(chosen) or {})}
