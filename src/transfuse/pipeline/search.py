"""``fit --search N`` (or ``search.enabled``): search, then run the pipeline with the best parameters.

The candidates that use the searched parameters are scored by nested CV: each outer fold re-runs
the search on its training rows (:mod:`transfuse.search.nested`), so their CV is not the best of
N trials on the same folds. What ships uses the full search's best parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfuse.backbones.registry import short_name
from transfuse.config import ExperimentConfig
from transfuse.distributed import refuse_under_ddp
from transfuse.errors import UserError
from transfuse.pipeline import run_experiment
from transfuse.search.nested import nested_search
from transfuse.search.run import SEARCH_DIR, apply_best, run_search, search_inputs, search_report_block


def refuse_distributed(cfg: ExperimentConfig) -> None:
    """A searched run fine-tunes on one process: its trials and nested searches are not replayed
    by DDP ranks (a search scales out with workers instead, docs/distributed.md)."""
    refuse_under_ddp(cfg.train.finetune, "search.enabled", "a searched run fine-tunes on one device",
                     "set train.finetune.devices: 1, or scale the search out with 'transfuse search --worker' "
                     "processes (docs/distributed.md)")


def refuse_variants(cfg: ExperimentConfig) -> None:
    """A search whose best parameters the run applies refuses ``adapt.variants``: a variant trains
    on top of those parameters, chosen on all training rows, and is not nested, so its CV would
    score settings chosen on its own validation folds."""
    if cfg.adapt.variants and cfg.search.apply_best:
        raise UserError(f"adapt.variants ({', '.join(cfg.adapt.variants)}) cannot run in a searched run that "
                        "applies its best parameters: their CV would use settings chosen on their own "
                        "validation folds; drop adapt.variants, or set search.apply_best: false")


def fit_with_search(cfg: ExperimentConfig, run_dir: str | Path, n_trials: int, storage: str | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Search (``run_dir/search/``), then run the pipeline with the best parameters (when
    ``search.apply_best``), the searched candidates scored by nested CV. The report gets a
    ``search`` block: best parameters, per-stage counts, how the CV was made (``cv``), the nested
    candidates and the link to search.html."""
    refuse_distributed(cfg)
    refuse_variants(cfg)
    run_dir = Path(run_dir)
    inputs = search_inputs(cfg, run_dir, progress)
    res = run_search(cfg, run_dir, storage=storage, n_trials=n_trials, progress=progress, inputs=inputs)
    return run_searched(cfg, run_dir, res, inputs, progress)


def resume_searched(cfg: ExperimentConfig, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Continue a searched run (``search/search.json`` exists) with its candidates still nested;
    the search itself is not rerun."""
    from transfuse.io import read_json

    refuse_distributed(cfg)
    refuse_variants(cfg)
    res = read_json(run_dir / SEARCH_DIR / "search.json")
    return run_searched(cfg, run_dir, res, search_inputs(cfg, run_dir, progress), progress)


def run_searched(cfg: ExperimentConfig, run_dir: Path, res: dict[str, Any], inputs: Any,
                 progress: bool) -> dict[str, Any]:
    """The pipeline after a search ``res``: best parameters applied, the candidates that use them
    scored by nested CV; the report's ``search`` block says how."""
    from transfuse.evaluate.report_html import write_report_html
    from transfuse.io import atomic_write_json

    if cfg.search.apply_best:
        nested = nested_search(cfg, inputs, res, run_dir / SEARCH_DIR / "nested")
        names = [f"{short_name(b.name)}/{s}" for b in cfg.backbones for s in cfg.adapt.strategies
                 if nested.applies(s)]
        report = run_experiment(apply_best(cfg, res), run_dir, progress, wrap={n: nested.wrap for n in names})
        names = [c["name"] for c in report["candidates"] if c["name"] in names]  # not the skipped ones
        trials = f"{res['n_trials']} head trials" if nested.heads is not None else ""
        if nested.finetune is not None:
            trials += f"{' and ' if trials else ''}{cfg.search.finetune_trials} fine-tuning trials"
        cv = (f"nested: a search of {trials} inside each outer fold (the shipped model uses the full "
              "search's best parameters)") if names else "no candidate uses searched parameters"
    else:
        names = []
        report = run_experiment(cfg, run_dir, progress)
        cv = "not nested: search.apply_best is false, so the candidates use the configured parameters"
    report["search"] = {**search_report_block(res, cv), "nested_candidates": names}
    atomic_write_json(run_dir / "report.json", report)
    write_report_html(report, run_dir)
    return report
