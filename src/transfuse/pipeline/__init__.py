"""The pipeline as a stage script: data -> single candidates -> fusions -> choice -> report.

One run = one folder (:class:`~transfuse.artifacts.store.RunFolder`). Finished candidates are
kept on disk, so ``transfuse resume`` (or the same ``transfuse run``) continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.artifacts.store import RunFolder, check_data_options
from transfuse.config import ExperimentConfig, config_to_yaml
from transfuse.distributed import rank_label, wait_for_followers
from transfuse.errors import UserError
from transfuse.io import atomic_write_json, read_json


#: How long rank 0 waits, after its last candidate, for the ranks Lightning's launcher started
#: from it: they have the same predictions left to make as rank 0 had after the last fit.
FOLLOWER_WAIT_S = 3600.0


def run_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output.dir or Path("runs") / cfg.name)


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path | None = None, progress: bool = True,
                   wrap: dict[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole experiment; returns the report dict. ``wrap``: see
    :func:`~transfuse.pipeline.singles.run_singles`; ``overwrite``: replace a run folder that holds
    a different experiment (see :meth:`~transfuse.artifacts.store.RunFolder.start`)."""
    from transfuse.pipeline.fusions import run_fusions
    from transfuse.pipeline.report import build_report, finish
    from transfuse.pipeline.singles import run_singles
    from transfuse.train.cache import FeatureCache

    check_data_options(cfg)
    run = RunFolder(run_dir if run_dir is not None else run_dir_for(cfg))
    if (who := rank_label()) is not None:
        from transfuse.pipeline.follow import follow_experiment

        return follow_experiment(cfg, run, who, wrap)
    run.claim(cfg)
    run.start(config_to_yaml(cfg), overwrite=overwrite)
    t = t0 = time.perf_counter()
    data = run.prepare_data(cfg)
    timings = {"data": time.perf_counter() - t}
    if len(np.unique(data.train.labels)) < 2:
        raise UserError(f"data {cfg.data.path!r}: fewer than 2 classes with valid inputs; need at least 2")
    cache = FeatureCache()
    results, skipped = run_singles(cfg, run, data, cache, progress, timings, wrap)
    if not results:
        raise UserError("no candidate could run: " + "; ".join(s["reason"] for s in skipped))
    if cfg.fuse.enabled:
        t = time.perf_counter()
        results += run_fusions(cfg, run, data, results, cache, progress)
        timings["fusion"] = time.perf_counter() - t
    report = build_report(cfg, run, data, results, timings)
    report["skipped"] = skipped
    report["wall_seconds"] = time.perf_counter() - t0  # nested timings (embed: within a candidate) not summed
    if cfg.fuse.enabled and (run.path / "fusion.json").exists():
        report["fusion"] = read_json(run.path / "fusion.json")  # members left out, with reasons
    finish(cfg, run, data, results, report)
    # the ranks Lightning's launcher started from this process (torchrun waits for its own): after
    # the report, which a follower of the Python API waits for before its script goes on
    followers = [{"pid": pid, "exit_code": code} for pid, code in wait_for_followers(FOLLOWER_WAIT_S)]
    if followers:
        report["followers"] = followers
        atomic_write_json(run.path / "report.json", report)
    return report
