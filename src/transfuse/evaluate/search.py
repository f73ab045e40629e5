"""Hyperparameter search with Optuna: cheap head trials on cached features, then a few
fine-tuning trials.

The objective is the mean CV score over the run's folds; each fold's running mean is reported
as an intermediate value so the median pruner stops weak trials after a fold or two. The study
lives in an Optuna RDB storage (a sqlite file in the run folder by default), so a killed search
resumes, and workers on other machines join it with ``transfuse search CONFIG --worker
--storage URL``. The study stops at exactly ``n_trials`` finished (complete or pruned) trials,
whatever the number of workers.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.errors import UserError
from transfuse.evaluate.search_config import ParamSpace, SearchConfig

log = logging.getLogger(__name__)

SEARCH_DIR = "search"
_LIVE = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")


class _Overflow(Exception):
    """This trial would exceed the study's n_trials (another worker got there first)."""


# ----------------------------------------------------------------------------- study plumbing

def suggest(trial: Any, name: str, space: ParamSpace) -> Any:
    """Draw one parameter from ``space`` on an Optuna trial."""
    if space.kind == "categorical":
        return trial.suggest_categorical(name, list(space.choices or ()))
    if space.kind == "int":
        return trial.suggest_int(name, int(space.low), int(space.high), step=int(space.step or 1), log=space.log)
    return trial.suggest_float(name, float(space.low), float(space.high), step=space.step, log=space.log)


def make_sampler(kind: str, space: dict[str, ParamSpace], seed: int, grid_points: int = 5) -> Any:
    import optuna

    if kind == "grid":
        return optuna.samplers.GridSampler({k: v.grid(grid_points) for k, v in space.items()}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)


def grid_size(space: dict[str, ParamSpace], grid_points: int) -> int:
    return int(np.prod([len(v.grid(grid_points)) for v in space.values()])) if space else 1


def make_storage(url: str, heartbeat_s: int) -> Any:
    """An Optuna RDB storage with heartbeats: trials of a killed worker are failed and retried."""
    import warnings

    import optuna
    import sqlalchemy

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
                kw = {"heartbeat_stale_trial_callback": retry(max_retry=3)} if retry else \
                    {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
                storage = optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s,
                                                     grace_period=2 * heartbeat_s, **kw)
            break
        except Exception as e:  # noqa: BLE001 -- bad URL, missing driver, unreachable server
            race = isinstance(e, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError))
            if race and attempt < 4:  # e.g. workers creating the tables of a new database at once
                time.sleep(0.2 * (attempt + 1))
                continue
            raise UserError(f"search storage {url!r} cannot be opened ({type(e).__name__}: {e}); "
                            "give an Optuna RDB URL such as sqlite:///search.db") from None
    if url.startswith("sqlite"):
        _no_fsync_per_commit(storage.engine)
    return storage


def _no_fsync_per_commit(engine: Any) -> None:
    """sqlite in WAL mode with ``synchronous=NORMAL``: a commit no longer waits for the disk
    (about 20 commits per trial took 9 ms each), yet a killed process loses nothing committed;
    only a power cut may lose the last commits. WAL needs one machine (no network disk)."""
    from sqlalchemy import event

    def pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened while creating the tables get the pragmas too


def open_study(storage: Any, name: str, sampler: Any, pruner: str, worker: bool) -> Any:
    """Create the study, or load it (``worker``: it must exist already)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    p = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0) if pruner == "median" \
        else optuna.pruners.NopPruner()
    if worker:
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=p)
        except KeyError:
            raise UserError(f"no study {name!r} in the search storage; start it first with "
                            "'transfuse search CONFIG' (without --worker)") from None
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=p,
                               direction="maximize", load_if_exists=True)


def finished_count(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(study: Any, objective: Callable[[Any], float], n_trials: int,
              timeout: float | None = None) -> int:
    """Run trials until the study holds ``n_trials`` finished trials (all workers together).

    A trial whose number ranks past ``n_trials`` among live trials (a race between workers)
    is marked FAIL with ``overflow=True`` before it runs anything, so no trial is lost or run
    twice. When the remaining trials are running elsewhere, it waits for them: a worker killed
    meanwhile has its trial failed after the heartbeat grace period and retried here (also one
    killed before its first heartbeat). Returns how many trials this process finished."""
    from optuna.trial import TrialState

    live = tuple(getattr(TrialState, s) for s in _LIVE)
    done_here, t0 = 0, time.monotonic()
    storage = study._storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    adopted: set[int] = set()
    overflowed = [False]  # whether THIS process's last trial overflowed (the study's last trial
    #                       may be another worker's)

    def guarded(trial: Any) -> float:
        before = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        overflowed[0] = len(before) >= n_trials
        if overflowed[0]:
            trial.set_user_attr("overflow", True)
            raise _Overflow()
        return objective(trial)

    while timeout is None or time.monotonic() - t0 < timeout:
        if interval:
            _reap(study, storage, 2 * interval, adopted)
        trials = study.get_trials(deepcopy=False, states=live)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if finished >= n_trials:
            break
        if len(trials) >= n_trials and not waiting:
            if not interval:  # no heartbeats: a dead worker's trial would never end; stop here
                break
            time.sleep(min(1.0, interval / 2))  # the last trials run elsewhere: wait for them
            continue
        study.optimize(guarded, n_trials=1, catch=(_Overflow,))
        if not overflowed[0]:
            done_here += 1
    return done_here


def _reap(study: Any, storage: Any, grace_s: float, adopted: set[int]) -> None:
    """Fail (and retry) the trials of dead workers. Optuna fails a RUNNING trial whose last
    heartbeat is older than the grace period, but never one that has no heartbeat at all (its
    worker died between creating it and the first heartbeat); such a trial, once older than the
    grace period, gets one heartbeat recorded here, so it goes stale like the others."""
    from datetime import datetime, timedelta

    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    with warnings.catch_warnings():  # optuna marks it experimental
        warnings.simplefilter("ignore")
        fail_stale_trials(study)
    old = datetime.now() - timedelta(seconds=grace_s)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t._trial_id not in adopted and t.datetime_start is not None and t.datetime_start < old:
            adopted.add(t._trial_id)
            storage.record_heartbeat(t._trial_id)


# ----------------------------------------------------------------------------- objectives

def report_fold(trial: Any, scores: list[float], last: bool) -> None:
    """Report the running CV mean after a fold; prune (keeping the fold scores) when Optuna says so."""
    import optuna

    trial.report(float(np.mean(scores)), step=len(scores) - 1)
    if not last and trial.should_prune():
        trial.set_user_attr("fold_scores", scores)
        raise optuna.TrialPruned()


def head_objective(X: np.ndarray, y: np.ndarray, folds: list, head_cfg: Any, space: dict[str, ParamSpace],
                   metric: str, seed: int, fast: bool = True, tol: float = 1e-4) -> Callable[[Any], float]:
    """CV score of a head (HeadConfig + the trial's parameters) on cached features ``X``.

    ``fast``: linear L-BFGS heads are fitted by a per-fold :class:`LinearHeadProblem` (features
    standardised and rotated once for the whole study, float32, warm starts, gradient
    tolerance ``tol``); other heads (MLP, Adam) and ``fast=False`` fit a :class:`HeadClassifier`
    per fold, as the pipeline does."""

    from transfuse.candidates import score
    from transfuse.train.heads import (
        HeadClassifier,
        LinearHeadProblem,
        resolve_optimizer,
    )

    n_classes = int(y.max()) + 1
    problems: dict[tuple[int, bool], LinearHeadProblem] = {}

    def fold_proba(cfg: Any, k: int, tr: np.ndarray, va: np.ndarray) -> np.ndarray:
        if fast and cfg.kind == "linear" and resolve_optimizer(cfg.optimizer, cfg.dropout, True) == "lbfgs":
            key = (k, bool(cfg.standardize))
            if key not in problems:
                problems[key] = LinearHeadProblem(X[tr], y[tr], X[va], n_classes, standardize=key[1], tol=tol)
            return problems[key].fit_proba(cfg.weight_decay, cfg.label_smoothing, cfg.class_weight, cfg.max_iter)
        head = HeadClassifier.from_config(cfg.model_copy(update={"seed": seed + k}), n_classes=n_classes)
        return head.fit(X[tr], y[tr]).predict_proba(X[va])

    def objective(trial: Any) -> float:
        params = {k: suggest(trial, k, s) for k, s in space.items()}
        cfg = head_cfg.model_copy(update=params)
        scores = []
        for k, (tr, va) in enumerate(folds):
            scores.append(score(y[va], fold_proba(cfg, k, tr, va), metric))
            report_fold(trial, scores, last=k == len(folds) - 1)
        trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores))

    return objective


def apply_augment_strength(augment: Any, modality: str, s: float) -> Any:
    """Scale the modality's augmentation: 0 = off, 1 = strong (image jitter/rotation/erasing,
    audio noise/shift/gain/SpecAugment probabilities)."""
    if augment is None:
        return None
    if modality == "image":
        return augment.model_copy(update={"enabled": s > 0, "color_jitter": 0.4 * s, "rotation": 15.0 * s,
                                          "random_erasing": 0.25 * s})
    if modality == "audio":
        return augment.model_copy(update={"enabled": s > 0, "noise_prob": s, "shift_prob": s,
                                          "gain_prob": s, "specaugment_prob": s})
    return augment


def finetune_objective(backbone: Any, train: Any, folds: list, n_classes: int, cfg: Any,
                       head_init_fn: Callable[[np.ndarray], Any] | None, space: dict[str, ParamSpace],
                       work: Path) -> Callable[[Any], float]:
    """CV score of fine-tuning ``backbone`` with FinetuneConfig + the trial's parameters."""

    from transfuse.candidates import score
    from transfuse.train.finetune import finetune

    def objective(trial: Any) -> float:
        params = {k: suggest(trial, k, s) for k, s in space.items()}
        strength = params.pop("augment_strength", None)
        ft = cfg.train.finetune.model_copy(update=params)
        aug = getattr(cfg.augment, train.modality, None)
        if strength is not None:
            aug = apply_augment_strength(aug, train.modality, float(strength))
        y, scores = train.labels, []
        for k, (tr, va) in enumerate(folds):
            init = head_init_fn(tr) if head_init_fn is not None else None
            res = finetune(copy.deepcopy(backbone), train.subset(tr), train.subset(va), n_classes, ft,
                           work / f"trial{trial.number}" / f"fold{k}", head_init=init, augment=aug,
                           seed=cfg.seed + k, progress=False)
            scores.append(score(y[va], res.val_proba, cfg.evaluate.metric))
            report_fold(trial, scores, last=k == len(folds) - 1)
        trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores))

    return objective


# ----------------------------------------------------------------------------- summaries

def summarize(study: Any, stage: str) -> dict[str, Any]:
    """Trials table, best trial, parameter importances and the optimisation history of a study."""
    import optuna
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("overflow")]
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "fold_scores": t.user_attrs.get("fold_scores"),
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
             if t.datetime_complete and t.datetime_start else None} for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {"stage": stage, "study": study.study_name, "n_trials": len(rows),
                           "n_complete": len(complete),
                           "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                           "trials": rows, "best_value": None, "best_params": None, "importances": {}}
    if complete:
        best = max(complete, key=lambda t: t.value)
        out.update(best_value=best.value, best_params=best.params, best_number=best.number)
        varied = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
        if len(complete) >= 4 and varied:
            try:
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=sorted(varied))
                out["importances"] = {k: float(v) for k, v in imp.items()}
            except (RuntimeError, ValueError) as e:  # e.g. too few distinct trials
                log.info("no parameter importances: %s", e)
    return out


def write_search_html(summaries: list[dict[str, Any]], folder: Path) -> Path:
    """``search.html``: per stage, the optimisation history, importances, best params, trials."""
    import base64
    import html

    from transfuse.io import atomic_write_text

    parts = [("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>transfuse search</title>"
              "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
              "table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 8px;"
              "text-align:left}img{max-width:100%}</style></head><body><h1>Hyperparameter search</h1>")]
    for s in summaries:
        parts.append(f"<h2>{html.escape(s['stage'])}: study {html.escape(s['study'])}</h2>"
                     f"<p>{s['n_trials']} trials ({s['n_complete']} complete, {s['n_pruned']} pruned); best CV "
                     f"score {_fmt(s['best_value'], 4)}; best "
                     f"parameters <code>{html.escape(str(s['best_params']))}</code></p>")
        for png in (history_png(s), importance_png(s)):
            if png:
                parts.append(f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
        rows = sorted(s["trials"], key=lambda r: -(r["value"] if r["value"] is not None else -1e9))
        parts.append("<table><tr><th>#</th><th>state</th><th>CV score</th><th>seconds</th><th>params</th></tr>"
                     + "".join(f"<tr><td>{r['number']}</td><td>{r['state']}</td><td>"
                               f"{_fmt(r['value'], 4)}</td><td>{_fmt(r['seconds'], 2)}</td><td><code>"
                               f"{html.escape(str(r['params']))}</code></td></tr>" for r in rows) + "</table>")
    path = folder / "search.html"
    atomic_write_text(path, "".join(parts) + "</body></html>\n")
    return path


def _fmt(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def history_png(s: dict[str, Any]) -> bytes | None:
    """Optimisation history: each complete trial's CV score and the best so far."""
    from transfuse.evaluate.plots import _figure, _png

    pts = [(r["number"], r["value"]) for r in s["trials"] if r["state"] == "COMPLETE"]
    if not pts:
        return None
    x, v = np.array(pts, dtype=float).T
    fig = _figure(7, 3.2)
    ax = fig.add_subplot()
    ax.scatter(x, v, s=10, alpha=0.6, label="trial")
    ax.step(x, np.maximum.accumulate(v), where="post", color="#d62728", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("CV score")
    ax.set_title(f"optimisation history ({s['stage']})")
    ax.legend(loc="lower right")
    return _png(fig)


def importance_png(s: dict[str, Any]) -> bytes | None:
    from transfuse.evaluate.plots import _figure, _png

    imp = s.get("importances") or {}
    if not imp:
        return None
    names = list(imp)[::-1]
    fig = _figure(7, 0.4 * len(names) + 1.2)
    ax = fig.add_subplot()
    ax.barh(names, [imp[n] for n in names], color="#4c78a8")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"parameter importances ({s['stage']})")
    return _png(fig)


# ----------------------------------------------------------------------------- the search

def run_search(cfg: Any, run_dir: Path, storage: str | None = None, n_trials: int | None = None,
               worker: bool = False, progress: bool = False) -> dict[str, Any]:
    """Search heads on the cached features of one backbone, then (``finetune_trials``) fine-tune.

    Writes ``run_dir/search/search.json`` and ``search.html``; returns the summary with
    ``best_head`` / ``best_finetune`` (the parameters to apply)."""
    import optuna

    from transfuse.backbones.registry import create_backbone
    from transfuse.io import atomic_write_json
    from transfuse.run import backbone_options, prepare_data
    from transfuse.train.cache import FeatureCache

    sc: SearchConfig = cfg.search
    n = n_trials if n_trials is not None else sc.n_trials
    folder = run_dir / SEARCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or sc.storage or f"sqlite:///{(folder / 'search.db').resolve()}"
    name = sc.study_name or cfg.name
    seed = cfg.seed if sc.seed is None else sc.seed
    names = [b.name for b in cfg.backbones]
    bname = sc.backbone or names[0]
    bcfg = next((b for b in cfg.backbones if b.name == bname), None)
    if bcfg is None:
        raise UserError(f"search.backbone {bname!r} is not among the backbones; use one of: {', '.join(names)}")
    data = prepare_data(cfg, run_dir)
    backbone = create_backbone(bcfg.name, **backbone_options(cfg, bcfg.options, cfg.data.modality))
    if getattr(backbone, "is_raw_estimator", False):
        raise UserError(f"search.backbone {bname!r} is a raw estimator without features; pick another backbone")
    X = FeatureCache().embed(backbone, data.train, cfg.train.embed_batch_size, progress)
    y = data.train.labels
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = make_storage(url, sc.heartbeat_s)
    t0 = time.perf_counter()
    study = open_study(st, name, make_sampler(sc.sampler, sc.space, seed, sc.grid_points), sc.pruner, worker)
    n_head = min(n, grid_size(sc.space, sc.grid_points)) if sc.sampler == "grid" else n
    run_study(study, head_objective(X, y, data.folds, cfg.train.head, sc.space, cfg.evaluate.metric, seed,
                                    fast=sc.fast_heads, tol=sc.head_tol), n_head, sc.timeout)
    head = summarize(study, "heads on cached features")
    head["seconds"] = time.perf_counter() - t0
    head["seconds_per_trial"] = head["seconds"] / max(1, head["n_trials"])
    summaries = [head]
    best_ft = None
    if sc.finetune_trials and getattr(backbone, "trainable", True):
        best_head = cfg.train.head.model_copy(update=head["best_params"] or {})
        lp_ft = "lp_ft" in cfg.adapt.strategies and best_head.kind == "linear"
        n_classes = len(data.train.classes)

        def init_fn(tr: np.ndarray) -> Any:
            from transfuse.train.heads import HeadClassifier

            return HeadClassifier.from_config(best_head, n_classes=n_classes).fit(X[tr], y[tr]).to_linear()

        t1 = time.perf_counter()
        ft_space = sc.finetune_space
        fstudy = open_study(st, name + "-finetune", make_sampler(sc.sampler, ft_space, seed, sc.grid_points),
                            sc.pruner, worker)
        n_ft = min(sc.finetune_trials, grid_size(ft_space, sc.grid_points)) if sc.sampler == "grid" \
            else sc.finetune_trials
        run_study(fstudy, finetune_objective(backbone, data.train, data.folds, n_classes, cfg,
                                             init_fn if lp_ft else None, ft_space, folder / "finetune"),
                  n_ft, sc.timeout)
        ft = summarize(fstudy, "fine-tuning")
        ft["seconds"] = time.perf_counter() - t1
        ft["seconds_per_trial"] = ft["seconds"] / max(1, ft["n_trials"])
        summaries.append(ft)
        best_ft = ft["best_params"]
    result = {"storage": url if url.startswith("sqlite") else url.split("@")[-1], "backbone": bname,
              "sampler": sc.sampler, "stages": summaries, "best_head": head["best_params"],
              "best_finetune": best_ft, "html": str(folder / "search.html")}
    atomic_write_json(folder / "search.json", result)
    write_search_html(summaries, folder)
    return result


def apply_best(cfg: Any, result: dict[str, Any]) -> Any:
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
    from transfuse.run import run_dir_for

    cfg = load_config(config_path, overrides or [])
    return run_search(cfg, run_dir_for(cfg), storage=storage, n_trials=n_trials, worker=worker, progress=progress)


def fit_with_search(cfg: Any, run_dir: Path, n_trials: int, storage: str | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """``transfuse fit ... --search N``: search, then run the pipeline with the best parameters;
    the report gets a ``search`` block (best parameters, per-stage counts, link to search.html)."""
    from transfuse.evaluate.report_html import write_report_html
    from transfuse.io import atomic_write_json
    from transfuse.run import run_experiment

    res = run_search(cfg, run_dir, storage=storage, n_trials=n_trials, progress=progress)
    best_cfg = apply_best(cfg, res) if cfg.search.apply_best else cfg
    report = run_experiment(best_cfg, run_dir, progress=progress)
    report["search"] = search_report_block(res)
    atomic_write_json(run_dir / "report.json", report)
    write_report_html(report, run_dir)
    return report


def search_report_block(res: dict[str, Any]) -> dict[str, Any]:
    """The ``report["search"]`` block: no per-trial rows (those are in search.json/html)."""
    return {"html": "search/search.html", "sampler": res["sampler"], "backbone": res["backbone"],
            "best_head": res["best_head"], "best_finetune": res["best_finetune"],
            "stages": [{k: s.get(k) for k in ("stage", "n_trials", "n_complete", "n_pruned", "best_value",
                                              "best_params", "importances", "seconds", "seconds_per_trial")}
                       for s in res["stages"]]}
