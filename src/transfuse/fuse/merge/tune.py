"""Merges that need a validation score: greedy soup, and a hook to search merge parameters.

``evaluate`` is the pipeline's callback: it gets a state dict (greedy soup) or the path of a
merged model folder (parameter search) and returns a score where higher is better.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge.config import MergeConfig, load_config
from transfuse.fuse.merge.sources import open_checkpoint
from transfuse.fuse.merge.tensor_io import read_tensor


@dataclass(frozen=True)
class SoupResult:
    """Greedy soup's choice: models kept (in the order added) and every score seen."""

    kept: list[str]
    scores: dict[str, float]  # individual validation scores
    history: list[tuple[str, float, bool]] = field(default_factory=list)  # (added, soup score, kept)
    state_dict: dict[str, Tensor] = field(default_factory=dict, repr=False)


def load_state_dict(ref: str, root: Path | None = None) -> dict[str, Tensor]:
    """A whole checkpoint in memory (float tensors as float32); for small models only."""
    ckpt = open_checkpoint(ref, root)
    out = {}
    for name, e in ckpt.tensors.items():
        x = read_tensor(e)
        out[name] = x.float() if x.is_floating_point() else x
    return out


def greedy_soup(config: MergeConfig | Mapping[str, Any] | str | Path,
                evaluate: Callable[[dict[str, Tensor]], float]) -> SoupResult:
    """Wortsman et al. 2022, recipe 1: sort models by validation score, start from the best, add
    each next model to the uniform average and keep it only if the score does not drop.
    """
    cfg = config if isinstance(config, MergeConfig) else load_config(config)
    states = {m.name: load_state_dict(m.model, cfg.root) for m in cfg.models}
    keys = set(next(iter(states.values())))
    for name, sd in states.items():
        if set(sd) != keys or any(sd[k].shape != states[cfg.models[0].name][k].shape for k in keys):
            raise UserError(f"greedy soup: model {name!r} does not have the same tensors and "
                            "shapes as the others; soups need fine-tunes of one architecture")
    scores = {name: float(evaluate(sd)) for name, sd in states.items()}
    order = sorted(states, key=lambda n: -scores[n])  # stable: config order breaks ties
    kept = [order[0]]
    total = {k: v.clone() for k, v in states[order[0]].items()}
    best = scores[order[0]]
    history = [(order[0], best, True)]
    soup = dict(states[order[0]])
    for name in order[1:]:
        trial_total = {k: (total[k] + states[name][k]) if total[k].is_floating_point() else total[k]
                       for k in total}
        n = len(kept) + 1
        trial = {k: v / n if v.is_floating_point() else v for k, v in trial_total.items()}
        score = float(evaluate(trial))
        keep = score >= best
        history.append((name, score, keep))
        if keep:
            kept.append(name)
            total, best, soup = trial_total, score, trial
    return SoupResult(kept, scores, history, soup)


@dataclass(frozen=True)
class SearchResult:
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
    from transfuse.fuse.merge.engine import merge

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
    from transfuse.fuse.merge.engine import merge

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
