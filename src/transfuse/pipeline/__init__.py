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
from transfuse.distributed import follower_label, refuse_under_ddp, wait_for_followers
from transfuse.errors import UserError
from transfuse.io import atomic_write_json, read_json


#: How long rank 0 waits, after its last candidate, for the ranks Lightning's launcher started
#: from it: they have the same predictions left to make as rank 0 had after the last fit.
FOLLOWER_WAIT_S = 3600.0


def run_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output.dir or Path("runs") / cfg.name)


def refuse_time_limit_under_ddp(cfg: ExperimentConfig) -> None:
    """The time-limit planner decides by each process's clock (epochs that fit, candidates
    stopped): under DDP the ranks could reach different fits, so the two do not go together."""
    refuse_under_ddp(cfg.train.finetune, "budget.time_limit", "the planner decides by each process's clock, so "
                     "the ranks could reach different fits", "set train.finetune.devices: 1, or leave out the time limit")


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path | None = None, progress: bool = True,
                   wrap: dict[str, Any] | None = None, overwrite: bool = False,
                   started: float | None = None) -> dict[str, Any]:
    """Run (or resume) the whole experiment; returns the report dict. ``wrap``: see
    :func:`~transfuse.pipeline.singles.run_singles`; ``overwrite``: replace a run folder that holds
    a different experiment (see :meth:`~transfuse.artifacts.store.RunFolder.start`); ``started``:
    when the command started (``time.time()``; default now), from which ``budget.time_limit`` counts."""
    from transfuse.budget import Budget, budgeted
    from transfuse.pipeline.plan import Planner

    limit = cfg.budget.time_limit
    if limit is not None:
        refuse_time_limit_under_ddp(cfg)
    budget = Budget(limit, start=started) if limit is not None else None
    planner = Planner(budget, preset=cfg.budget.preset or ("medium" if limit is not None else None))
    with budgeted(budget):
        return _run(cfg, run_dir, progress, wrap, overwrite, planner)


def _run(cfg: ExperimentConfig, run_dir: str | Path | None, progress: bool, wrap: dict[str, Any] | None,
         overwrite: bool, planner: Any) -> dict[str, Any]:
    from transfuse.pipeline.fusions import run_fusions
    from transfuse.pipeline.report import build_report, finish
    from transfuse.pipeline.plan import plan_image_size
    from transfuse.pipeline.singles import build, run_singles
    from transfuse.train.cache import FeatureCache

    check_data_options(cfg)
    run = RunFolder(run_dir if run_dir is not None else run_dir_for(cfg))
    ft = cfg.train.finetune
    if (who := follower_label(ft.accelerator, ft.devices, ft.num_nodes)) is not None:
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
    t = time.perf_counter()
    cfg, loaded = plan_image_size(cfg, data, planner, cache, build)  # under a time limit: a size that fits
    if planner.budget is not None and cfg.data.modality == "image":
        timings["plan:image_size"] = time.perf_counter() - t
    results, skipped = run_singles(cfg, run, data, cache, progress, timings, wrap, planner, loaded=loaded)
    if not results and planner.budget is not None:
        raise UserError(f"budget.time_limit {planner.budget.limit:g} s: no candidate finished in time ("
                        + "; ".join(f"{s['name']}: {s['reason']}" for s in skipped)
                        + "); raise the time limit or use fewer backbones")
    if not results:
        raise UserError("no candidate could run: " + "; ".join(s["reason"] for s in skipped))
    if cfg.fuse.enabled:
        t = time.perf_counter()
        results += run_fusions(cfg, run, data, results, cache, progress)
        timings["fusion"] = time.perf_counter() - t
    report = build_report(cfg, run, data, results, timings)
    report["skipped"] = skipped
    if planner.budget is not None:
        report["plan"] = planner.summary()
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
