"""``transfuse resume RUN``: continue an interrupted run where it stopped (finished candidates are
kept); a searched run continues with its searched candidates still scored by nested CV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfuse.artifacts.store import CONFIG_FILE, RunFolder
from transfuse.config import load_config
from transfuse.errors import UserError
from transfuse.pipeline import run_experiment
from transfuse.pipeline.search import resume_searched
from transfuse.search.run import SEARCH_DIR


def resume(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its saved config."""
    run = RunFolder(run_dir)
    if not run.config_file.exists():
        raise UserError(f"{str(run.path)!r} is not a transfuse run folder (no {CONFIG_FILE}); "
                        "give the folder a 'transfuse run' or 'transfuse fit' wrote")
    cfg = load_config(run.config_file)
    if (run.path / SEARCH_DIR / "search.json").is_file():
        return resume_searched(cfg, run.path, progress)
    return run_experiment(cfg, run.path, progress=progress)
