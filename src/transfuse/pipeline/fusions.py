"""The fusion stage: every fusion becomes one more candidate, scored on the same outer folds and
saved as a servable artifact (resumable). Members left out are listed with the reason in
``fusion.json``."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from transfuse import budget
from transfuse.adapt.result import CandidateResult
from transfuse.artifacts import save
from transfuse.artifacts.spec import ModelSpec
from transfuse.artifacts.store import Prepared, RunFolder
from transfuse.budget import TimeLimitReached
from transfuse.backbones.registry import create_backbone, finetune_options, resolve_options, short_name
from transfuse.faults import fault_point
from transfuse.io import atomic_write_json
from transfuse.progress import console


#: The image baseline's candidate name (``adapt.baseline``): never a fusion member or teacher.
IMAGE_BASELINE = "pixels"


def feature_backbones(cfg: Any) -> list[tuple[str, str, dict[str, Any], Any]]:
    """``(name, spec, options, backbone)`` of every backbone of the run that yields features."""
    out = []
    for b in cfg.backbones:
        opts = resolve_options(b.options, cfg.data.modality, cfg.preprocess.image_size)
        bb = create_backbone(b.name, **opts)
        if not getattr(bb, "is_raw_estimator", False):
            out.append((short_name(b.name), b.name, opts, bb))
    return out


def run_soups(cfg: Any, run: RunFolder, data: Prepared, results: list[CandidateResult], done: Any, keep: Any,
              spec: Any, excluded: dict[str, str], backbones: Callable[[], list]) -> None:
    """``fuse.soups``: per backbone with at least 2 fine-tuned candidates, its soups as candidates
    (:mod:`transfuse.fuse.soups`), saved as fine-tuned networks (``kind: finetune``)."""
    from transfuse.data.multimodal import dataset_for
    from transfuse.fuse.soups import SoupBuilder, find_ingredients, soup_candidates, soup_name

    groups, left_out = find_ingredients(results, len(data.folds), run.work_dir, run.candidate_dir)
    excluded.update(left_out)
    if not groups:
        return
    by_spec = {bb.spec: (n, s, o, bb) for n, s, o, bb in backbones()}
    for bspec, ingredients in groups.items():
        short, name, opts, bb = by_spec[bspec]
        own = next(b.options for b in cfg.backbones if b.name == name)
        sized = finetune_options(own, cfg.data.modality, cfg.preprocess.image_size, cfg.train.finetune.image_size)
        if sized is not None:  # its fine-tunes trained at train.finetune.image_size
            opts, bb = sized, create_backbone(name, **sized)
        methods = [m for m in cfg.fuse.soups.methods if not done(soup_name(short, m))]
        if not methods:
            continue
        work = run.work_dir(f"soup/{short}")
        builder = SoupBuilder(bb, dataset_for(data.train, bb.modality), dataset_for(data.test, bb.modality),
                              len(data.train.classes), work, cfg.train.embed_batch_size)
        made, skipped = soup_candidates(ingredients, builder, methods, data.train.labels, data.folds,
                                        cfg.train.finetune.inner_val, cfg.evaluate.metric, cfg.seed, short)
        excluded.update(skipped)
        for cand, state, details in made:
            s = spec(cand.name, kind="finetune", strategy="soup", method=cand.method, members=cand.members,
                     backbones=[save.backbone_ref(name, opts, bb)], extra={"soup": details})
            save.save_network(run.candidate_dir(cand.name), s, builder.network(state))
            keep(cand)
        shutil.rmtree(work, ignore_errors=True)  # fold soups: only their predictions are kept


def run_fusions(cfg: Any, run: RunFolder, data: Prepared, results: list[CandidateResult], cache: Any,
                progress: bool = True) -> list[CandidateResult]:
    """The configured fusions over ``results`` as candidates (saved, resumable); under a time
    limit the ones not finished by the deadline are left out (``fusion.json`` says so)."""
    from transfuse.fuse.candidates import select_members

    fault_point("fusion")
    fc, metric = cfg.fuse, cfg.evaluate.metric
    classes, modality = list(data.train.classes), data.train.modality
    # the image baseline is a reference, not material: fusions of transferred candidates stay
    # exportable (ONNX cannot hold raw pixels + logistic regression) and as they were without it
    reference = {r.name for r in results if r.kind == "baseline" and r.name == IMAGE_BASELINE}
    results = [r for r in results if r.name not in reference]
    members, excluded = select_members(fc, results)
    excluded.update({n: "the no-transfer image baseline is compared with, not fused" for n in reference})
    for n, why in excluded.items():
        console.print(f"[yellow]fusion: leave out[/yellow] {n}: {why}")
    out: list[CandidateResult] = []

    def done(name: str) -> bool:
        r = run.done(name)
        if r is not None:
            console.print(f"[dim]resume: {name} already done (cv {r.cv_mean:.4f})[/dim]")
            out.append(r)
        return r is not None

    def keep(cand: CandidateResult) -> None:
        cand.save(run.candidate_dir(cand.name))
        console.print(f"[bold]fusion[/bold] {cand.name}: cv {metric} {cand.cv_mean:.4f} ± {cand.cv_std:.4f}")
        out.append(cand)

    def spec(name: str, **kw: Any) -> ModelSpec:
        return ModelSpec(kind=kw.pop("kind", "ensemble"), candidate=name, modality=modality, classes=classes, **kw)

    made: list = []

    def all_backbones() -> list:
        """:func:`feature_backbones`, built once (on first use)."""
        if not made:
            made.append(feature_backbones(cfg))
        return made[0]

    try:
        _fusion_stages(cfg, run, data, results, cache, progress, members, excluded, done, keep, spec, all_backbones,
                       out)
    except TimeLimitReached as e:
        why = f"stopped at the time limit ({e.where})"
        console.print(f"[yellow]fusion: stop[/yellow] {why}")
        excluded["fusions not finished"] = why
    atomic_write_json(run.path / "fusion.json", {"members": [r.name for r in members], "excluded": excluded})
    return out


def _fusion_stages(cfg: Any, run: RunFolder, data: Prepared, results: list[CandidateResult], cache: Any,
                   progress: bool, members: list[CandidateResult], excluded: dict[str, str], done: Callable,
                   keep: Callable, spec: Callable, all_backbones: Callable[[], list], out: list) -> None:
    """The fusions in order (soups, ensembles, feature fusion, distillation, joint), each one
    checking the time limit before it starts."""
    from transfuse.data.multimodal import dataset_for
    from transfuse.fuse.candidates import ensemble_candidate, feature_candidate
    from transfuse.fuse.student import distill_candidate, pick_student, pick_teacher

    fc, seed, metric = cfg.fuse, cfg.seed, cfg.evaluate.metric
    y, classes = data.train.labels, list(data.train.classes)
    c, bs = len(classes), cfg.train.embed_batch_size
    if fc.soups.enabled and fc.soups.methods:
        budget.check("soups")
        run_soups(cfg, run, data, results, done, keep, spec, excluded, all_backbones)
    if len(members) >= 2:
        for method in fc.ensembles:
            if not done(f"fusion/{method}"):
                budget.check(f"fusion/{method}")
                cand, est = ensemble_candidate(method, members, y, data.folds, metric, seed)
                save.save_ensemble(run.candidate_dir(cand.name), spec(cand.name, method=method,
                                                                     members=cand.members), est)
                keep(cand)
    elif fc.ensembles:
        excluded["fusion ensembles"] = f"need at least 2 members; {len(members)} left after the reasons above"
    backbones: list | None = None
    if fc.features.enabled and not done("fusion/features"):
        budget.check("fusion/features")
        backbones = all_backbones()
        if len(backbones) >= 2:
            blocks, tblocks = ({n: cache.embed(bb, dataset_for(part, bb.modality), bs, progress)
                                for n, _, _, bb in backbones} for part in (data.train, data.test))
            cand, est = feature_candidate(fc.features, blocks, tblocks, y, data.folds, c, metric, seed)
            singles = {r.backbone: r for r in results if r.kind == "single"}
            known = [singles[bb.spec].inference_ms_per_example for *_, bb in backbones if bb.spec in singles]
            cand.inference_ms_per_example = float(sum(v for v in known if v is not None)) or None
            cand.params = (cand.params or 0) + sum(sum(int(p.numel()) for p in bb.parameters()) for *_, bb in backbones)
            refs = [save.backbone_ref(s, o, bb, block=n) for n, s, o, bb in backbones]
            save.save_features(run.candidate_dir(cand.name), spec(cand.name, backbones=refs), est)
            keep(cand)
        else:
            excluded["fusion/features"] = "needs at least 2 backbones with features"
    teacher = pick_teacher(out, fc.distill.teacher) if fc.distill.enabled else None
    if fc.distill.enabled and teacher is None:
        excluded["distill"] = "no fusion ran to teach a student (fuse.ensembles / fuse.features)"
    elif fc.distill.enabled:
        backbones = backbones or all_backbones()
        student = pick_student(fc.distill.student, results, backbones)
        if not done(f"distill/{student[0]}"):
            budget.check("distillation")
            cand, model, settings = distill_candidate(cfg, data, teacher, results, cache, student, backbones, progress)
            _, name, opts, bb = student
            s = spec(cand.name, kind="probe", strategy="distill", backbones=[save.backbone_ref(name, opts, bb)],
                     extra={"teacher": teacher.name, "distill": settings})
            folder = run.candidate_dir(cand.name)
            if fc.distill.mode == "finetune":
                save.save_network(folder, s.model_copy(update={"kind": "finetune"}), model)
            else:
                save.save_probe(folder, s, model)
            keep(cand)
    if fc.joint.enabled and not done("fusion/joint"):
        budget.check("fusion/joint")
        from transfuse.fuse.joint import joint_candidate

        backbones = backbones or all_backbones()
        cand, net, used = joint_candidate(fc.joint, data, backbones, metric, seed)
        refs = [save.backbone_ref(s, o, bb, block=n) for n, s, o, bb in backbones if n in used]
        save.save_joint(run.candidate_dir(cand.name), spec(cand.name, backbones=refs), net,
                        fc.joint.hidden, fc.joint.dropout)
        keep(cand)
