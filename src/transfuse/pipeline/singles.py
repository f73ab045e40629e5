"""The single candidates of a run: one per (backbone x strategy), scored by :func:`cross_fit` and
saved as servable artifacts (resumable: a finished candidate is loaded, not refitted)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from transfuse.adapt.cross_fit import cross_fit
from transfuse.adapt.finetune import FinetuneStrategy
from transfuse.adapt.partial import PartialStrategy
from transfuse.adapt.probe import ProbeStrategy
from transfuse.adapt.raw import RawStrategy
from transfuse.adapt.result import CandidateResult
from transfuse.artifacts import save
from transfuse.artifacts.spec import ModelSpec
from transfuse.artifacts.store import Prepared, RunFolder
from transfuse.backbones.registry import create_backbone, resolve_options, short_name
from transfuse.config import TRAINING_STRATEGIES
from transfuse.data.multimodal import dataset_for
from transfuse.progress import console


def n_params(module: Any) -> int | None:
    try:
        return int(sum(p.numel() for p in module.parameters()))
    except AttributeError:
        return None


def inference_ms(backbone: Any, test: Any, n: int = 16) -> float | None:
    """Milliseconds per example for decode + preprocess + forward at batch ``n`` (CPU or GPU)."""
    if len(test) == 0 or getattr(backbone, "is_raw_estimator", False):
        return None
    import torch

    from transfuse.train.cache import compute_features

    sub = test.subset(range(min(n, len(test))))
    with torch.no_grad():
        compute_features(backbone, sub.subset(range(min(2, len(sub)))), batch_size=n)  # warm up
        t = time.perf_counter()
        compute_features(backbone, sub, batch_size=n)
    return 1000.0 * (time.perf_counter() - t) / len(sub)


def run_singles(cfg: Any, run: RunFolder, data: Prepared, cache: Any, progress: bool,
                timings: dict[str, float], wrap: dict[str, Callable[[Any], Any]] | None = None,
                follower: bool = False) -> tuple[list[CandidateResult], list[dict[str, str]]]:
    """Every (backbone x strategy) candidate of ``cfg``: results and ``{name, reason}`` skipped.
    ``wrap[name]`` replaces candidate ``name``'s strategy by ``wrap[name](strategy)`` (a searched
    candidate: the search runs inside each fold). ``follower`` (a rank > 0 of a distributed run):
    only the unfinished fine-tuning candidates are cross-fitted, in the same order as on rank 0,
    so that every rank reaches the same ``Trainer.fit`` calls; nothing is saved or returned."""
    y, classes = data.train.labels, list(data.train.classes)
    n_classes, metric, bs = len(classes), cfg.evaluate.metric, cfg.train.embed_batch_size
    results: list[CandidateResult] = []
    skipped: list[dict[str, str]] = []
    for bcfg in cfg.backbones:
        opts = resolve_options(bcfg.options, cfg.data.modality, cfg.preprocess.image_size)
        t = time.perf_counter()
        backbone = create_backbone(bcfg.name, **opts)
        timings[f"load:{short_name(bcfg.name)}"] = time.perf_counter() - t
        raw = getattr(backbone, "is_raw_estimator", False)
        train, test = dataset_for(data.train, backbone.modality), dataset_for(data.test, backbone.modality)
        feats: tuple[np.ndarray, np.ndarray] | None = None
        for strategy in ([None] if raw else cfg.adapt.strategies):
            name = short_name(bcfg.name) if raw else f"{short_name(bcfg.name)}/{strategy}"
            if strategy in TRAINING_STRATEGIES and not getattr(backbone, "trainable", True):
                reason = f"{bcfg.name} cannot be fine-tuned (frozen backbone); only linear_probe applies"
                console.print(f"[yellow]skip[/yellow] {name}: {reason}")
                skipped.append({"name": name, "reason": reason})
                continue
            if follower and (raw or strategy not in TRAINING_STRATEGIES):
                continue  # nothing distributed: rank 0 alone fits it
            done = run.done(name)
            if done is not None:
                console.print(f"[dim]resume: {name} already done (cv {done.cv_mean:.4f})[/dim]")
                results.append(done)
                continue
            t = time.perf_counter()
            console.print(f"[bold]candidate[/bold] {name}")
            if strategy in ("linear_probe", "lp_ft", "partial_ft") and feats is None:
                te = time.perf_counter()
                feats = (cache.embed(backbone, train, bs, progress), cache.embed(backbone, test, bs, progress))
                timings[f"embed:{short_name(bcfg.name)}"] = time.perf_counter() - te
            if raw:
                strat: Any = RawStrategy(backbone, [train.load(i) for i in range(len(train))],
                                         [test.load(i) for i in range(len(test))], y, n_classes)
            elif strategy == "linear_probe":
                strat = ProbeStrategy(cfg.train.head, feats[0], feats[1], y, n_classes)
            elif strategy == "partial_ft":
                strat = PartialStrategy(backbone, train, test, cfg.train.finetune, cfg.train.head,
                                        cfg.train.partial, run.work_dir(name), features=feats[0],
                                        batch_size=bs, progress=progress)
            else:
                strat = FinetuneStrategy(strategy, backbone, train, test, cfg.train.finetune, cfg.train.head,
                                         run.work_dir(name), features=feats[0] if feats else None,
                                         augment=getattr(cfg.augment, train.modality, None), batch_size=bs,
                                         progress=progress)
            if wrap and name in wrap:
                strat = wrap[name](strat)
            cv = cross_fit(strat, y, data.folds, n_classes, metric, cfg.seed)
            if follower:
                continue
            spec = ModelSpec(kind="probe", candidate=name, modality=train.modality, classes=classes,
                             strategy=strategy)
            folder = run.candidate_dir(name)
            if raw:
                save.save_raw(folder, spec.model_copy(update={
                    "estimator": {"name": bcfg.name, "options": opts}}), cv.final.model)
                params = None
            else:
                spec = spec.model_copy(update={"backbones": [save.backbone_ref(bcfg.name, opts, backbone)]})
                if strategy == "linear_probe":
                    save.save_probe(folder, spec, cv.final.model)
                    params = (n_params(backbone) or 0) + feats[0].shape[1] * n_classes + n_classes
                else:
                    network = strat.shippable(cv.final.model) if isinstance(strat, PartialStrategy) \
                        else cv.final.model
                    save.save_network(folder, spec.model_copy(update={"kind": "finetune"}), network)
                    params = n_params(network)
            res = CandidateResult(
                name=name, kind="baseline" if raw else "single", oof=cv.oof, test=cv.test,
                cv_scores=cv.scores, backbone=None if raw else backbone.spec, strategy=strategy,
                method=name if raw else None, history=cv.history, fit_seconds=time.perf_counter() - t,
                params=params, inference_ms_per_example=inference_ms(backbone, test), selected=cv.selected)
            res.save(folder)
            run.release_work(name)
            results.append(res)
            timings[f"candidate:{name}"] = time.perf_counter() - t
            console.print(f"  cv {metric} {res.cv_mean:.4f} ± {res.cv_std:.4f}")
    return results, skipped
