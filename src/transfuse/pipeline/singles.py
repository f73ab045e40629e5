"""The single candidates of a run: one per (backbone x strategy), scored by :func:`cross_fit` and
saved as servable artifacts (resumable: a finished candidate is loaded, not refitted)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from transfuse import budget
from transfuse.adapt.bag import bag_name, bag_result
from transfuse.adapt.cross_fit import CrossFit, cross_fit
from transfuse.adapt.finetune import FinetuneStrategy
from transfuse.adapt.partial import PartialStrategy
from transfuse.adapt.probe import ProbeStrategy
from transfuse.adapt.raw import RawStrategy
from transfuse.adapt.result import CandidateResult
from transfuse.artifacts import save
from transfuse.artifacts.spec import ModelSpec
from transfuse.artifacts.store import Prepared, RunFolder
from transfuse.budget import TimeLimitReached
from transfuse.backbones.registry import (create_backbone, finetune_options, is_raw_estimator, resolve_options,
                                         short_name)
from transfuse.config import TRAINING_STRATEGIES
from transfuse.data.multimodal import dataset_for
from transfuse.pipeline.plan import Planner, view_scales
from transfuse.progress import console


def n_params(module: Any) -> int | None:
    try:
        return int(sum(p.numel() for p in module.parameters()))
    except AttributeError:
        return None


def inference_ms(backbone: Any, test: Any, n: int = 16) -> float | None:
    """Milliseconds per example for decode + preprocess + forward at batch ``n`` (CPU or GPU);
    None past the time limit (a fold bag shipping after a stopped refit)."""
    if len(test) == 0 or getattr(backbone, "is_raw_estimator", False):
        return None
    import torch

    from transfuse.train.cache import compute_features

    sub = test.subset(range(min(n, len(test))))
    try:
        with torch.no_grad():
            compute_features(backbone, sub.subset(range(min(2, len(sub)))), batch_size=n)  # warm up
            t = time.perf_counter()
            compute_features(backbone, sub, batch_size=n)
    except TimeLimitReached:
        return None
    return 1000.0 * (time.perf_counter() - t) / len(sub)


#: The multi-layer probe, and the suffix of its features' key in ``feats``.
MULTILAYER, TAPPED = "multilayer_probe", "|taps"
#: Heads on cached features; and every strategy that needs them (LP-FT starts from a probe).
PROBES = ("linear_probe", MULTILAYER)
FEATURE_STRATEGIES = (*PROBES, "lp_ft", "partial_ft")


def multilayer_view(cfg: Any, base: Any) -> tuple[Any, dict[str, Any]]:
    """``multilayer_probe``'s view of timm image backbone ``base``, and the backbone options that
    rebuild it: ``adapt.taps`` stages, at ``adapt.scales`` times ``base``'s own size as well (one
    with its own ``scales`` keeps them)."""
    scales = view_scales(cfg, base)
    view = base.tapped(cfg.adapt.taps, scales)
    return view, {"taps": cfg.adapt.taps, **({"scales": scales} if scales else {})}


def _embed(cfg: Any, cache: Any, name: str, base: Any, backbone: Any, key: str, train: Any, test: Any,
           bs: int, progress: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cached features under their ``feats`` keys: ``key``'s, from ``backbone`` (``base``, the
    backbone ``name`` as built, or its tapped view for ``multilayer_probe``). A run with both
    probes of an untapped timm backbone embeds once: the tapped features end with the plain ones,
    which also go into the cache as ``base``'s (feature fusion, later runs)."""
    if not (MULTILAYER in cfg.adapt.strategies and hasattr(base, "tapped") and base.taps == 0):
        return {key: (cache.embed(backbone, train, bs, progress), cache.embed(backbone, test, bs, progress))}
    view = backbone if backbone is not base else multilayer_view(cfg, base)[0]
    full = (cache.embed(view, train, bs, progress), cache.embed(view, test, bs, progress))
    d = base.feature_dim
    plain = (np.ascontiguousarray(full[0][:, -d:]), np.ascontiguousarray(full[1][:, -d:]))
    cache.put(base, train, plain[0])
    cache.put(base, test, plain[1])
    return {name + TAPPED: full, name: plain}


def bags_on(cfg: Any) -> bool:
    """``adapt.bag`` resolved: as set, or (``null``) on under a time limit only."""
    return cfg.adapt.bag if cfg.adapt.bag is not None else cfg.budget.time_limit is not None


def build(bcfg: Any, cfg: Any) -> tuple[Any, dict[str, Any]]:
    """Backbone ``bcfg`` built with its options resolved for ``cfg`` (the run's image size)."""
    opts = resolve_options(bcfg.options, cfg.data.modality, cfg.preprocess.image_size)
    return create_backbone(bcfg.name, **opts), opts


def singles_order(cfg: Any, is_raw: Callable[[Any], bool]) -> list[tuple[Any, str | None, str | None]]:
    """``(backbone config, strategy, what follows the backbone in the candidate's name)`` jobs in
    the order they run: every backbone's cheap candidates (raw baselines, linear probes) first,
    then the training strategies in the order listed, then the ``adapt.variants`` in theirs,
    backbone by backbone (``None, None``: a raw-input estimator, which has no strategy)."""
    cheap: list[tuple[Any, str | None, str | None]] = []
    training: dict[str, list[tuple[Any, str | None, str | None]]] = {}
    jobs = [*((s, s) for s in cfg.adapt.strategies), *((v.strategy, n) for n, v in cfg.adapt.variants.items())]
    for bcfg in cfg.backbones:
        if is_raw(bcfg):
            cheap.append((bcfg, None, None))
            continue
        for strategy, label in jobs:
            job = (bcfg, strategy, label)
            (training.setdefault(label, []) if strategy in TRAINING_STRATEGIES else cheap).append(job)
    return cheap + [j for _, label in jobs for j in training.get(label, [])]


def run_singles(cfg: Any, run: RunFolder, data: Prepared, cache: Any, progress: bool,
                timings: dict[str, float], wrap: dict[str, Callable[[Any], Any]] | None = None,
                planner: Planner | None = None, follower: bool = False, loaded: dict[str, Any] | None = None
                ) -> tuple[list[CandidateResult], list[dict[str, str]]]:
    """Every (backbone x strategy) candidate of ``cfg``: results and ``{name, reason}`` skipped.
    ``wrap[name]`` replaces candidate ``name``'s strategy by ``wrap[name](strategy)`` (a searched
    candidate: the search runs inside each fold). ``planner``: under a time limit, fine-tunes run
    with the epochs that fit and a candidate stopped by the deadline is left out (listed).
    ``follower`` (a rank > 0 of a distributed run): only the unfinished fine-tuning candidates are
    cross-fitted, in the same order as on rank 0, so that every rank reaches the same
    ``Trainer.fit`` calls; nothing is saved or returned. ``loaded``: backbones already built
    (``{name: (backbone, options)}``, from :func:`~transfuse.pipeline.plan.plan_image_size`)."""
    planner = planner or Planner(None)
    results: list[CandidateResult] = []
    skipped: list[dict[str, str]] = []
    loaded = dict(loaded or {})
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    unembedded: set[str] = set()  # backbones whose embedding the time limit stopped

    def load(bcfg: Any) -> tuple[Any, dict[str, Any]]:
        if bcfg.name not in loaded:
            t = time.perf_counter()
            loaded[bcfg.name] = build(bcfg, cfg)
            timings[f"load:{short_name(bcfg.name)}"] = time.perf_counter() - t
        return loaded[bcfg.name]

    for bcfg, strategy, label in singles_order(cfg, lambda b: is_raw_estimator(b.name)):
        name = short_name(bcfg.name) if label is None else f"{short_name(bcfg.name)}/{label}"
        variant = cfg.adapt.variants.get(label) if label != strategy else None
        if follower and strategy not in TRAINING_STRATEGIES:
            continue  # nothing distributed (a raw baseline, a probe): rank 0 alone fits it
        done = [r for r in (run.done(name), run.done(bag_name(name))) if r is not None]
        if done and (done[0].name == name or (done[0].selected or {}).get("refit_skipped")):
            for r in done:  # the candidate, its bag; or the bag that shipped without the refit
                console.print(f"[dim]resume: {r.name} already done (cv {r.cv_mean:.4f})[/dim]")
                results.append(r)
            if done[0].name != name:
                skipped.append({"name": name, "reason": _bag_reason(name, done[0].selected["refit_skipped"])})
            continue
        if bcfg.name in unembedded:  # one pass over the data did not fit: no fit of it will
            reason = f"not started: embedding with {bcfg.name} was stopped at the time limit"
            console.print(f"[yellow]skip[/yellow] {name}: {reason}")
            skipped.append({"name": name, "reason": reason})
            planner.note(name, "skip", reason)
            continue
        t = time.perf_counter()
        try:
            budget.check("before it started")
            res = _run_single(cfg, run, data, cache, progress, timings, wrap, planner, bcfg, strategy, name,
                              *load(bcfg), feats, skipped, follower, variant)
        except TimeLimitReached as e:
            reason = f"stopped at the time limit ({e.where})" if e.where != "before it started" else \
                "not started: the time limit was reached"
            console.print(f"[yellow]skip[/yellow] {name}: {reason}")
            skipped.append({"name": name, "reason": reason})
            planner.note(name, "stopped", reason)
            run.discard_work(name)
            if e.where.startswith("embed"):
                unembedded.add(bcfg.name)
            continue
        if res:
            results += res
            timings[f"candidate:{name}"] = time.perf_counter() - t
    return results, skipped


def _bag_reason(name: str, why: str) -> str:
    return f"time limit: refit {why}; {bag_name(name)} ships instead"


def _run_single(cfg: Any, run: RunFolder, data: Prepared, cache: Any, progress: bool, timings: dict[str, float],
                wrap: dict[str, Callable[[Any], Any]] | None, planner: Planner, bcfg: Any, strategy: str | None,
                name: str, backbone: Any, opts: dict[str, Any], feats: dict[str, tuple[np.ndarray, np.ndarray]],
                skipped: list[dict[str, str]], follower: bool = False, variant: Any = None) -> list[CandidateResult]:
    """One candidate: cross-fitted, saved, its results (the candidate, then its fold bag with
    ``adapt.bag``; only the bag where the time limit left the refit out; none: skipped, reason in
    ``skipped``; ``follower``: cross-fitted only). ``variant``: an ``adapt.variants`` entry
    (:class:`~transfuse.config.Variant`), the fine-tune it names trained with its seed and settings."""
    y, classes = data.train.labels, list(data.train.classes)
    n_classes, metric, bs = len(classes), cfg.evaluate.metric, cfg.train.embed_batch_size
    raw = strategy is None
    train, test = dataset_for(data.train, backbone.modality), dataset_for(data.test, backbone.modality)
    if strategy in TRAINING_STRATEGIES and not getattr(backbone, "trainable", True):
        reason = f"{bcfg.name} cannot be fine-tuned (frozen backbone); only linear_probe applies"
        console.print(f"[yellow]skip[/yellow] {name}: {reason}")
        skipped.append({"name": name, "reason": reason})
        return []
    sized = finetune_options(bcfg.options, cfg.data.modality, cfg.preprocess.image_size,
                             cfg.train.finetune.image_size) if strategy in TRAINING_STRATEGIES else None
    if sized is not None:  # train.finetune.image_size: its fine-tunes train (and predict) at that size
        backbone, opts = create_backbone(bcfg.name, **sized), sized
    base = backbone
    if strategy == MULTILAYER:
        if not hasattr(backbone, "tapped"):
            reason = (f"{bcfg.name} has no stage features (multilayer_probe needs a timm image backbone); "
                      "only linear_probe applies")
            console.print(f"[yellow]skip[/yellow] {name}: {reason}")
            skipped.append({"name": name, "reason": reason})
            return []
        backbone, more = multilayer_view(cfg, backbone)
        opts = {**opts, **more}
    t = time.perf_counter()
    console.print(f"[bold]candidate[/bold] {name}")
    key = bcfg.name + (TAPPED if strategy == MULTILAYER else f"@{sized['image_size']}px" if sized else "")
    if strategy in FEATURE_STRATEGIES and key not in feats:
        te = time.perf_counter()
        if sized is not None:  # the probe LP-FT starts from sees what the fine-tune sees
            feats[key] = (cache.embed(backbone, train, bs, progress), cache.embed(backbone, test, bs, progress))
        else:
            feats.update(_embed(cfg, cache, bcfg.name, base, backbone, key, train, test, bs, progress))
        # at the fine-tune's size under a key of its own: fusion_reserve subtracts the run size's
        tkey = f"embed:{short_name(bcfg.name)}" + (f"@{sized['image_size']}px" if sized else "")
        timings[tkey] = timings.get(tkey, 0.0) + time.perf_counter() - te
    f = feats.get(key)
    ft = cfg.train.finetune if variant is None else variant.settings(cfg.train.finetune)
    seed_shift = 0 if variant is None else variant.seed_shift(cfg.seed)
    bag = bags_on(cfg) and strategy in TRAINING_STRATEGIES and not follower
    refit, n_folds = True, None
    augment = getattr(cfg.augment, train.modality, None)

    def build() -> Any:  # the candidate's strategy, with the fine-tuning settings `ft` holds when called
        if raw:
            return RawStrategy(backbone, [train.load(i) for i in range(len(train))],
                               [test.load(i) for i in range(len(test))], y, n_classes)
        if strategy in PROBES:
            return ProbeStrategy(cfg.train.head, f[0], f[1], y, n_classes)
        if strategy == "partial_ft":  # caches the bottom's activations
            return PartialStrategy(backbone, train, test, ft, cfg.train.head, cfg.train.partial, run.work_dir(name),
                                   features=f[0], augment=augment, seed=cfg.seed, batch_size=bs, progress=progress)
        return FinetuneStrategy(strategy, backbone, train, test, ft, cfg.train.head, run.work_dir(name),
                                features=f[0] if f else None, augment=augment, batch_size=bs, progress=progress,
                                seed_shift=seed_shift)

    strat: Any = None
    if strategy in TRAINING_STRATEGIES and planner.budget is not None:
        from transfuse.train.finetune import measure_step

        reserve = fusion_reserve(cfg, timings)
        plan = None
        if planner.too_late(name, len(data.folds), reserve, bag=bag) is False:
            cost = None
            if strategy == "partial_ft":  # its steps run on the top, over the activations cached first
                strat = build()
                if planner.too_late(name, len(data.folds), reserve, bag=bag) is False:
                    cost = measure_step(strat.split.top, strat.train, n_classes, strat.ft, None, cfg.seed)
            else:
                cost = measure_step(backbone, train, n_classes, ft, augment, cfg.seed)
            if cost is not None:
                plan = planner.plan_finetune(name, cost, len(train), len(test), len(data.folds), ft.inner_val,
                                             ft.epochs, reserve=reserve, bag=bag)
        if plan is None:
            reason = next(d["reason"] for d in reversed(planner.decisions) if d["name"] == name)
            console.print(f"[yellow]skip[/yellow] {name}: {reason}")
            skipped.append({"name": name, "reason": f"time limit: {reason}"})
            return []
        epochs, refit, n_folds = plan
        ft = ft.model_copy(update={"epochs": epochs})
        if strat is not None:  # built while planning
            strat.ft = strat.ft.model_copy(update={"epochs": epochs})
    if strat is None:
        strat = build()
    if wrap and name in wrap:
        strat = wrap[name](strat)
    cv = cross_fit(strat, y, data.folds, n_classes, metric, cfg.seed, bag=bag, refit=refit, n_folds=n_folds)
    if follower:
        return []
    spec = ModelSpec(kind="probe", candidate=name, modality=train.modality, classes=classes, strategy=strategy)
    if not raw:
        spec = spec.model_copy(update={"backbones": [save.backbone_ref(bcfg.name, opts, backbone)]})
    ms = inference_ms(backbone, test)
    out = [_save_bag(run, spec, cv, strat, backbone.spec, ms)] if bag else []
    if cv.final is None:  # the time limit left the refit out: the bag ships instead
        reason = _bag_reason(name, cv.refit_skipped or "")
        console.print(f"[yellow]skip[/yellow] {name}: {reason.removeprefix('time limit: ')}")
        skipped.append({"name": name, "reason": reason})
        planner.note(name, "bag", reason.removeprefix("time limit: "))
        run.discard_work(name)  # the bag's folder holds its fold networks
        return out
    folder = run.candidate_dir(name)
    if raw:
        save.save_raw(folder, spec.model_copy(update={"estimator": {"name": bcfg.name, "options": opts}}),
                      cv.final.model)
        params = None
    elif strategy in PROBES:
        save.save_probe(folder, spec, cv.final.model)
        params = (n_params(backbone) or 0) + f[0].shape[1] * n_classes + n_classes
    else:
        network = _shippable(strat, cv.final.model)
        save.save_network(folder, spec.model_copy(update={"kind": "finetune"}), network)
        params = n_params(network)
    res = CandidateResult(
        name=name, kind="baseline" if raw else "single", oof=cv.oof, test=cv.test,
        cv_scores=cv.scores, backbone=None if raw else backbone.spec, strategy=strategy,
        method=name if raw else None, history=cv.history, fit_seconds=time.perf_counter() - t,
        params=params, inference_ms_per_example=ms, selected=cv.selected)
    res.save(folder)  # after the bag's: this result marks both done (resume)
    run.release_work(name)
    console.print(f"  cv {metric} {res.cv_mean:.4f} ± {res.cv_std:.4f}")
    return [res, *out]


def _shippable(strat: Any, model: Any) -> Any:
    """The whole network a fit ships (a partial fine-tune's top goes back into its backbone)."""
    return strat.shippable(model) if isinstance(strat, PartialStrategy) else model


def _save_bag(run: RunFolder, spec: ModelSpec, cv: CrossFit, strat: Any, backbone: str,
              ms: float | None) -> CandidateResult:
    """The fold bag of ``spec.candidate`` (:mod:`transfuse.adapt.bag`), saved with its own copy of
    the fold networks."""
    name = spec.candidate
    networks = [_shippable(strat, f.model) for f in cv.folds]
    res = bag_result(name, cv, backbone, n_params(networks[0]), ms)
    folder = run.candidate_dir(res.name)
    save.save_bag(folder, spec.model_copy(update={"candidate": res.name, "strategy": "bag", "members": [name]}),
                  networks)
    res.save(folder)
    on = f"cv as {name}" if cv.folds_run is None else f"cv {res.cv_mean:.4f} on {cv.folds_run} of {cv.folds_total} folds"
    console.print(f"  {res.name}: the {len(networks)} fold model(s) averaged ({on})")
    return res


def fusion_reserve(cfg: Any, timings: dict[str, float]) -> float:
    """Seconds to keep for the fusions when planning a fine-tune: 1.5x the probes' measured fit
    times without their embedding (a feature fusion fits one head over all of their cached
    features; the ensembles are cheaper), plus 0.5 s per ensemble, at least 2 s."""
    if not cfg.fuse.enabled:
        return 0.0
    probes = 0.0
    for b in cfg.backbones:
        short = short_name(b.name)
        probes += max(0.0, timings.get(f"candidate:{short}/linear_probe", 0.0) - timings.get(f"embed:{short}", 0.0))
    return max(2.0, 1.5 * probes + 0.5 * len(cfg.fuse.ensembles))
