"""Greedy soup: the merge that picks its models by a validation score (the engine runs it for
``merge_method: greedy_soup``).

``evaluate`` is the pipeline's callback: it gets a state dict and returns a score where higher is
better. Parameter searches, which call the engine, live in ``search``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
                evaluate: Callable[[dict[str, Tensor]], float],
                scores: Mapping[str, float] | None = None) -> SoupResult:
    """Wortsman et al. 2022, recipe 1: sort models by validation score, start from the best, add
    each next model to the uniform average and keep it only if the score does not drop.
    ``scores``: the models' own validation scores where already known (``{name: score}``, e.g.
    from the validation pass of their fine-tuning); the others are evaluated.
    """
    cfg = config if isinstance(config, MergeConfig) else load_config(config)
    states = {m.name: load_state_dict(m.model, cfg.root) for m in cfg.models}
    keys = set(next(iter(states.values())))
    for name, sd in states.items():
        if set(sd) != keys or any(sd[k].shape != states[cfg.models[0].name][k].shape for k in keys):
            raise UserError(f"greedy soup: model {name!r} does not have the same tensors and "
                            "shapes as the others; soups need fine-tunes of one architecture")
    known = dict(scores or {})
    scores = {name: float(known[name]) if name in known else float(evaluate(sd)) for name, sd in states.items()}
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
