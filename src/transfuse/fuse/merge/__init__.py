"""Streaming weight merging: soups, task arithmetic, TIES, DARE, DELLA, SLERP and its spherical kin,
Model Stock, Fisher, RegMean, SCE, RAM, passthrough frankenmerges, and the SVD family (TSV-M, Iso-C,
Iso-CTS, WUDI).

``estimate`` computes Fisher/RegMean statistics from data (and re-estimates a merged network's
BatchNorm statistics), ``tune`` picks a greedy soup and
``search`` searches coefficients on a validation score, ``multitask`` rebuilds one model per task
from a merge with per-task heads.

``merge(config, out_dir)`` runs a mergekit-format config (dict or YAML path); ``run_merge_cli`` is
``transfuse merge CONFIG --out DIR``. Methods live in ``METHODS`` (see ``method.merge_method``).
"""

from transfuse.fuse.merge.config import MergeConfig, ModelSpec, load_config
from transfuse.fuse.merge.engine import MergeResult, merge, run_merge_cli
from transfuse.fuse.merge.estimate import (
    classifier_batches,
    diagonal_fisher,
    recompute_batchnorm,
    regmean_grams,
    save_tensors,
)
from transfuse.fuse.merge.method import METHODS, MergeMethod, TensorContext, merge_method
from transfuse.fuse.merge.methods import get_method
from transfuse.fuse.merge.multitask import (
    evaluate_tasks,
    normalized_scores,
    task_state_dicts,
)
from transfuse.fuse.merge.search import SearchResult, optuna_search, search_parameters
from transfuse.fuse.merge.tune import SoupResult, greedy_soup, load_state_dict

__all__ = [
    "METHODS",
    "MergeConfig",
    "MergeMethod",
    "MergeResult",
    "ModelSpec",
    "SearchResult",
    "SoupResult",
    "TensorContext",
    "classifier_batches",
    "diagonal_fisher",
    "evaluate_tasks",
    "get_method",
    "greedy_soup",
    "load_config",
    "load_state_dict",
    "merge",
    "merge_method",
    "normalized_scores",
    "optuna_search",
    "recompute_batchnorm",
    "regmean_grams",
    "run_merge_cli",
    "save_tensors",
    "search_parameters",
    "task_state_dicts",
]
