"""Multi-head models from a merge: one shared backbone, one head per task (``heads.json``).

``task_state_dicts`` rebuilds each task's full state dict (the merged tensors plus that task's
head under its original names), so each task's model loads with ``load_state_dict`` as before the
merge; ``evaluate_tasks`` scores every task and ``normalized_scores`` divides by the individually
fine-tuned models' scores (FusionBench's normalised accuracy).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge.engine import HEAD_PREFIX
from transfuse.fuse.merge.tune import load_state_dict


def task_state_dicts(merged: str | Path) -> dict[str, dict[str, Tensor]]:
    """``{task: state_dict}`` for a merged folder with ``heads.json`` (tasks are the models' names)."""
    folder = Path(merged)
    heads_file = folder / "heads.json"
    if not heads_file.is_file():
        raise UserError(f"{folder}: no heads.json; merge with 'heads: auto' or 'heads: [PREFIX]' "
                        "to keep one head per task")
    heads: dict[str, dict[str, str]] = json.loads(heads_file.read_text())
    state = load_state_dict(str(folder))
    shared = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX + ".")}
    out = {}
    for task, mapping in heads.items():
        missing = [stored for stored in mapping.values() if stored not in state]
        if missing:
            raise UserError(f"{heads_file}: task {task!r} names tensors missing from the merged "
                            f"weights: {', '.join(missing)}; re-run the merge")
        out[task] = {**shared, **{orig: state[stored] for orig, stored in mapping.items()}}
    return out


def evaluate_tasks(merged: str | Path | Mapping[str, Mapping[str, Tensor]],
                   evaluators: Mapping[str, Callable[[dict[str, Tensor]], float]]) -> dict[str, float]:
    """Score each task's model with its own ``evaluators[task](state_dict)``; adds ``"average"``."""
    states = merged if isinstance(merged, Mapping) else task_state_dicts(merged)
    missing = [t for t in evaluators if t not in states]
    if missing:
        raise UserError(f"evaluate_tasks: no head for task(s) {', '.join(missing)} in the merge; "
                        f"tasks there: {', '.join(states)}")
    scores = {t: float(fn(dict(states[t]))) for t, fn in evaluators.items()}
    scores["average"] = sum(scores.values()) / len(scores)
    return scores


def normalized_scores(scores: Mapping[str, float], individual: Mapping[str, float]) -> dict[str, float]:
    """``scores[t] / individual[t]`` per task and their mean as ``"average"`` (1.0 = no loss)."""
    tasks = [t for t in individual if t != "average"]
    out = {t: scores[t] / individual[t] for t in tasks}
    out["average"] = sum(out.values()) / len(out)
    return out
