"""The search of a run folder: heads on one backbone's cached features, then (``finetune_trials``)
fine-tuning trials, both scored on the run's CV folds.

Writes ``RUN_DIR/search/search.json`` and ``search.html``. The best parameters are the ones a
``fit --search`` run ships; that run scores the searched candidates by re-running this search
inside each outer fold (:mod:`transfuse.search.nested`), never by the best trial's own score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.adapt.finetune import lp_ft_head
from transfuse.artifacts.store import Prepared, RunFolder
from transfuse.config import ExperimentConfig, SearchConfig
from transfuse.errors import UserError
from transfuse.search.objectives import apply_augment_strength, finetune_objective, head_objective
from transfuse.search.report import write_search_html
from transfuse.search.study import make_sampler, make_storage, open_study, run_study, summarize, trial_budget

SEARCH_DIR = "search"


@dataclass
class SearchInputs:
    """What the search works on: the run's data, the searched backbone and its cached features
    of the training part."""

    data: Prepared
    backbone_name: str
    backbone: Any
    X: np.ndarray


def search_inputs(cfg: ExperimentConfig, run_dir: Path, progress: bool = False) -> SearchInputs:
    """Load the data (the run's saved split) and embed it with ``search.backbone`` (default: the
    first backbone); features come from the feature cache when already computed."""
    from transfuse.backbones.registry import create_backbone, resolve_options
    from transfuse.train.cache import FeatureCache

    names = [b.name for b in cfg.backbones]
    bname = cfg.search.backbone or names[0]
    bcfg = next((b for b in cfg.backbones if b.name == bname), None)
    if bcfg is None:
        raise UserError(f"search.backbone {bname!r} is not among the backbones; use one of: {', '.join(names)}")
    data = RunFolder(run_dir).prepare_data(cfg)
    backbone = create_backbone(bcfg.name, **resolve_options(bcfg.options, cfg.data.modality,
                                                            cfg.preprocess.image_size))
    if getattr(backbone, "is_raw_estimator", False):
        raise UserError(f"search.backbone {bname!r} is a raw estimator without features; pick another backbone")
    X = FeatureCache().embed(backbone, data.train, cfg.train.embed_batch_size, progress)
    return SearchInputs(data=data, backbone_name=bname, backbone=backbone, X=X)


def lp_ft_init(cfg: ExperimentConfig, head: Any) -> bool:
    """Whether the fine-tuning trials start from a probe (LP-FT): when the run has ``lp_ft``
    candidates and the (searched) head is linear; otherwise they start from a fresh head."""
    return "lp_ft" in cfg.adapt.strategies and head.kind == "linear"


def run_search(cfg: ExperimentConfig, run_dir: Path, storage: str | None = None, n_trials: int | None = None,
               worker: bool = False, progress: bool = False, inputs: SearchInputs | None = None
               ) -> dict[str, Any]:
    """Search heads on the cached features of one backbone, then (``finetune_trials``) fine-tune.

    Writes ``run_dir/search/search.json`` and ``search.html``; returns the summary with
    ``best_head`` / ``best_finetune`` (the parameters to apply). ``inputs``: from
    :func:`search_inputs`, when the caller has them already."""
    import optuna

    from transfuse.io import atomic_write_json
    from transfuse.train.heads import HeadClassifier

    sc: SearchConfig = cfg.search
    n = n_trials if n_trials is not None else sc.n_trials
    name = sc.study_name or cfg.name
    seed = cfg.seed if sc.seed is None else sc.seed
    inputs = inputs or search_inputs(cfg, run_dir, progress)  # claims the run folder first
    folder = run_dir / SEARCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or sc.storage or f"sqlite:///{(folder / 'search.db').resolve()}"
    data, backbone, X = inputs.data, inputs.backbone, inputs.X
    y = data.train.labels
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = make_storage(url, sc.heartbeat_s)
    t0 = time.perf_counter()
    study = open_study(st, name, make_sampler(sc.sampler, sc.space, seed, sc.grid_points), sc.pruner, worker)
    ran = run_study(study, head_objective(X, y, data.folds, cfg.train.head, sc.space, cfg.evaluate.metric, seed,
                                    fast=sc.fast_heads, tol=sc.head_tol),
              trial_budget(sc.sampler, n, sc.space, sc.grid_points), sc.timeout)
    head = summarize(study, "heads on cached features")
    head["n_here"] = ran  # finished by this process (the study's n_trials count all workers)
    head["seconds"] = time.perf_counter() - t0
    head["seconds_per_trial"] = head["seconds"] / max(1, head["n_trials"])
    summaries = [head]
    best_ft = None
    if sc.finetune_trials and getattr(backbone, "trainable", True):
        best_head = cfg.train.head.model_copy(update=head["best_params"] or {})
        n_classes = len(data.train.classes)

        def init_fn(tr: np.ndarray) -> Any:  # the probe LP-FT starts from, as in the fit
            return HeadClassifier.from_config(lp_ft_head(best_head, cfg.train.finetune),
                                              n_classes=n_classes).fit(X[tr], y[tr]).to_linear()

        t1 = time.perf_counter()
        ft_space = sc.finetune_space
        fstudy = open_study(st, name + "-finetune", make_sampler(sc.sampler, ft_space, seed, sc.grid_points),
                            sc.pruner, worker)
        ran = run_study(fstudy, finetune_objective(backbone, data.train, data.folds, n_classes, cfg,
                                             init_fn if lp_ft_init(cfg, best_head) else None, ft_space,
                                             folder / "finetune"),
                  trial_budget(sc.sampler, sc.finetune_trials, ft_space, sc.grid_points), sc.timeout)
        ft = summarize(fstudy, "fine-tuning")
        ft["n_here"] = ran
        ft["seconds"] = time.perf_counter() - t1
        ft["seconds_per_trial"] = ft["seconds"] / max(1, ft["n_trials"])
        summaries.append(ft)
        best_ft = ft["best_params"]
    result = {"storage": url if url.startswith("sqlite") else url.split("@")[-1], "backbone": inputs.backbone_name,
              "sampler": sc.sampler, "n_trials": n, "stages": summaries, "best_head": head["best_params"],
              "best_finetune": best_ft, "html": str(folder / "search.html")}
    atomic_write_json(folder / "search.json", result)
    write_search_html(summaries, folder)
    return result


def apply_best(cfg: ExperimentConfig, result: dict[str, Any]) -> ExperimentConfig:
    """The config with the search's best head (and fine-tuning) parameters filled in."""
    from transfuse.config import validate_config

    raw = cfg.model_dump(mode="json")
    raw["train"]["head"].update(result.get("best_head") or {})
    ft = dict(result.get("best_finetune") or {})
    strength = ft.pop("augment_strength", None)
    raw["train"]["finetune"].update(ft)
    if strength is not None and cfg.data.modality in ("image", "audio"):
        aug = apply_augment_strength(getattr(cfg.augment, cfg.data.modality), cfg.data.modality, float(strength))
        raw["augment"][cfg.data.modality] = aug.model_dump(mode="json")
    return validate_config(raw, source="search result")


def search_cli(config_path: str | Path, overrides: list[str] | None = None, storage: str | None = None,
               n_trials: int | None = None, worker: bool = False, progress: bool = False) -> dict[str, Any]:
    """``transfuse search CONFIG``: run (or join, ``worker``) the study of a config's run folder."""
    from transfuse.config import load_config

    cfg = load_config(config_path, overrides or [])
    # the run folder as transfuse.pipeline.run_dir_for names it (this layer does not import the pipeline)
    run_dir = Path(cfg.output.dir or Path("runs") / cfg.name)
    return run_search(cfg, run_dir, storage=storage, n_trials=n_trials, worker=worker, progress=progress)


def search_report_block(res: dict[str, Any], cv: str | None = None) -> dict[str, Any]:
    """The ``report["search"]`` block: no per-trial rows (those are in search.json/html). ``cv``:
    how the searched candidates were scored (e.g. nested)."""
    block = {"html": "search/search.html", "sampler": res["sampler"], "backbone": res["backbone"],
             "best_head": res["best_head"], "best_finetune": res["best_finetune"],
             "stages": [{k: s.get(k) for k in ("stage", "n_trials", "n_complete", "n_pruned", "best_value",
                                               "best_params", "importances", "seconds", "seconds_per_trial")}
                        for s in res["stages"]]}
    if cv is not None:
        block["cv"] = cv
    return block
