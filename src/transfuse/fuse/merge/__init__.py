"""Streaming weight merging: soups, task arithmetic, TIES, DARE, SLERP, Model Stock, Fisher, RegMean.

``merge(config, out_dir)`` runs a mergekit-format config (dict or YAML path); ``run_merge_cli`` is
``transfuse merge CONFIG --out DIR``. Methods live in ``METHODS`` (see ``method.merge_method``).
"""

from transfuse.fuse.merge import methods as _methods  # noqa: F401  (registers the built-ins)
from transfuse.fuse.merge.config import MergeConfig, ModelSpec, load_config
from transfuse.fuse.merge.engine import MergeResult, merge, run_merge_cli
from transfuse.fuse.merge.method import (
    METHODS,
    MergeMethod,
    TensorContext,
    get_method,
    merge_method,
)
from transfuse.fuse.merge.tune import (
    SearchResult,
    SoupResult,
    greedy_soup,
    search_parameters,
)

__all__ = [
    "METHODS", "MergeConfig", "MergeMethod", "MergeResult", "ModelSpec", "SearchResult",
    "SoupResult", "TensorContext", "get_method", "greedy_soup", "load_config", "merge",
    "merge_method", "run_merge_cli", "search_parameters",
]
