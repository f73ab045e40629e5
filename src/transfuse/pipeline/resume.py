"""``transfuse resume RUN``: continue an interrupted run where it stopped (finished candidates are
kept); a searched run continues with its searched candidates still scored by nested CV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfuse.artifacts.store import CONFIG_FILE, RunFolder
from transfuse.config import load_config
from transfuse.distributed import is_follower
from transfuse.errors import UserError
from transfuse.pipeline import run_experiment
from transfuse.pipeline.search import resume_searched
from transfuse.search.run import SEARCH_DIR


def absolute_data_paths(run: RunFolder) -> None:
    """A run made before data paths were stored absolute: its relative ``data.path`` /
    ``data.test_path``, when they exist from here, are rewritten absolute in its config (nothing
    else changes), so that it is still the same experiment."""
    import yaml

    from transfuse.config import read_yaml
    from transfuse.config.data import absolute_paths
    from transfuse.io import atomic_write_text

    raw = read_yaml(run.config_file)
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    fixed = absolute_paths(data)
    if fixed != data:
        raw["data"] = fixed
        atomic_write_text(run.config_file, yaml.safe_dump(raw, sort_keys=False))


def resume(run_dir: str | Path, progress: bool = True, started: float | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its saved config (a time limit counts from ``started``)."""
    run = RunFolder(run_dir)
    if not run.config_file.exists():
        raise UserError(f"{str(run.path)!r} is not a transfuse run folder (no {CONFIG_FILE}); "
                        "give the folder a 'transfuse run' or 'transfuse fit' wrote")
    if not is_follower():  # rank 0 alone rewrites the config (a follower reads it)
        absolute_data_paths(run)
    cfg = load_config(run.config_file)
    if (run.path / SEARCH_DIR / "search.json").is_file():
        return resume_searched(cfg, run.path, progress)
    return run_experiment(cfg, run.path, progress=progress, started=started)
