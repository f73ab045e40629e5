"""Search merge parameters on a validation score: every merge of a grid, or Optuna's TPE sampler.

``evaluate`` is the pipeline's callback: it gets the path of a merged model folder and returns a
score where higher is better.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transfuse.errors import UserError
from transfuse.fuse.merge.config import MergeConfig, load_config
from transfuse.fuse.merge.engine import merge


@dataclass(frozen=True)
class SearchResult:
    """The best parameters, their score and every trial (parameters, score) in order."""

    best: dict[str, Any]
    best_score: float
    trials: list[tuple[dict[str, Any], float]]


def search_parameters(config: MergeConfig | Mapping[str, Any] | str | Path,
                      grid: Mapping[str, Sequence[Any]],
                      evaluate: Callable[[Path], float],
                      work_dir: str | Path | None = None) -> SearchResult:
    """Try every combination of top-level parameters in ``grid`` (e.g. ``{"lambda": [0.3, 0.5, 1]}``),
    merge each into a scratch folder and score it with ``evaluate(path)``; the best wins.

    The hook for coefficient search: the pipeline supplies ``evaluate`` on a validation split
    (an Optuna sampler can replace the grid later with the same callback).
    """
    cfg = config if isinstance(config, MergeConfig) else load_config(config)
    keys = list(grid)
    trials: list[tuple[dict[str, Any], float]] = []
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        for i, values in enumerate(itertools.product(*(grid[k] for k in keys))):
            params = dict(zip(keys, values))
            out = Path(scratch) / f"trial{i}"
            merge(cfg.with_parameters(**params), out)
            trials.append((params, float(evaluate(out))))
    if not trials:
        raise UserError("search_parameters: the grid is empty; give at least one value per key")
    best, score = max(trials, key=lambda t: t[1])
    return SearchResult(best, score, trials)


def optuna_search(config: MergeConfig | Mapping[str, Any] | str | Path,
                  space: Mapping[str, Sequence[Any] | tuple[float, float]],
                  evaluate: Callable[[Path], float], n_trials: int = 20, seed: int = 0,
                  work_dir: str | Path | None = None) -> SearchResult:
    """As :func:`search_parameters` with Optuna's TPE sampler: ``space`` maps a top-level parameter
    to a ``(low, high)`` float range (a tuple of two numbers) or a list of choices; ``n_trials``
    merges are scored by ``evaluate(path)`` (maximised). Seeded: the same seed gives the same trials.
    """
    try:
        import optuna
    except ImportError:
        raise UserError("optuna_search needs optuna: pip install optuna (or use search_parameters "
                        "with a grid)") from None
    cfg = config if isinstance(config, MergeConfig) else load_config(config)
    if n_trials < 1 or not space:
        raise UserError("optuna_search: give a non-empty space and n_trials >= 1")
    trials: list[tuple[dict[str, Any], float]] = []

    def suggest(trial: Any, key: str, spec: Any) -> Any:
        if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(v, (int, float)) for v in spec):
            return trial.suggest_float(key, float(spec[0]), float(spec[1]))
        return trial.suggest_categorical(key, list(spec))

    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        def objective(trial: Any) -> float:
            params = {k: suggest(trial, k, v) for k, v in space.items()}
            out = Path(scratch) / f"trial{trial.number}"
            merge(cfg.with_parameters(**params), out)
            score = float(evaluate(out))
            trials.append((params, score))
            return score

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(objective, n_trials=n_trials)
    best, score = max(trials, key=lambda t: t[1])
    return SearchResult(best, score, trials)
