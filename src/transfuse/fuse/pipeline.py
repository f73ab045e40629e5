"""Fusion as a pipeline step: every fusion becomes one more candidate, chosen by CV like the rest.

``run_fusions`` (called by :func:`transfuse.run.run_experiment` when ``fuse.enabled``) builds:

- ``fusion/<method>`` for each ``fuse.ensembles`` method over the single candidates' out-of-fold
  probabilities. Its CV is nested (:func:`~transfuse.fuse.cv.cross_val_fusion`: fitted on the other
  folds' OOF rows, scored on this fold's); the shipped ensemble is refitted on all OOF rows and
  applied to the members' test probabilities.
- ``fusion/features``: one :class:`~transfuse.fuse.features.FeatureFusionClassifier` over the cached
  features of the run's backbones (several modalities for multimodal data), CV on the run's folds.
- ``distill/<backbone>`` (``fuse.distill.enabled``): the feature fusion distilled into one backbone
  (its CV nests the teacher's cross-fitting inside each fold: see :func:`distill_candidate`).
- ``fusion/joint`` (``fuse.joint.enabled``): all backbones fine-tuned under one late-fusion MLP.

Each is saved under ``candidates/<name>/`` (``result.json``, ``proba.npz``, ``model.json`` and
``fusion.safetensors``/``head.safetensors``), so a run resumes and ``transfuse predict`` serves the
chosen one. Members that cannot be fused are listed with the reason in ``fusion.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.candidates import CandidateResult, safe_name, save_head, score
from transfuse.io import atomic_write_json
from transfuse.progress import console


def _folder(run_dir: Path, name: str) -> Path:
    return run_dir / "candidates" / safe_name(name)


def _sum(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return float(sum(known)) if known else None


def select_members(cfg: Any, results: list[CandidateResult], run_dir: Path
                   ) -> tuple[list[CandidateResult], dict[str, str]]:
    """The single candidates to fuse (best CV first) and ``{name: reason}`` for those left out."""
    from transfuse.fuse.cv import screen_members

    fc = cfg.fuse
    excluded: dict[str, str] = {}
    pool = []
    for r in results:
        if r.kind == "baseline" and not fc.include_baselines:
            excluded[r.name] = ("raw-estimator baseline: it has no saved model, so a fusion with it "
                                "could not be served; set fuse.include_baselines: true to fuse it anyway")
        elif r.kind in ("single", "baseline"):
            pool.append(r)
    kept, bad = screen_members({r.name: r.oof for r in pool})
    kept_test, _ = screen_members({r.name: r.test for r in pool if r.name in kept and len(r.test)})
    for r in pool:
        if r.name in kept and len(r.test) and r.name not in kept_test:
            bad[r.name] = "test probabilities hold NaN/inf or bad rows"
    excluded.update(bad)
    members = sorted((r for r in pool if r.name not in bad), key=lambda r: -r.cv_mean)
    if fc.max_members is not None:
        for r in members[fc.max_members:]:
            excluded[r.name] = f"not among the best fuse.max_members={fc.max_members} by CV"
        members = members[: fc.max_members]
    return members, excluded


def ensemble_candidate(method: str, members: list[CandidateResult], y: np.ndarray, folds: list,
                       metric: str, seed: int = 0) -> tuple[CandidateResult, Any]:
    """Nested-CV scores, OOF and test probabilities of one prediction-level fusion."""
    from transfuse.fuse.cv import cross_val_fusion

    t0 = time.perf_counter()
    params = {"seed": seed} if method == "stacking" else {}
    res = cross_val_fusion(method, {r.name: r.oof for r in members}, y, folds, **params)
    est = res["estimator"]
    n_test = len(members[0].test)
    test = est.predict_proba([r.test for r in members]) if n_test else \
        np.zeros((0, members[0].oof.shape[1]))
    oof = res["oof_probs"]
    scores = [score(y[va], oof[va], metric) for _, va in folds]
    used = [r for r, w in zip(members, getattr(est, "weights_", np.ones(len(members))), strict=True) if w > 0]
    cand = CandidateResult(
        name=f"fusion/{method}", kind="fusion", oof=np.nan_to_num(oof).astype(np.float32),
        test=np.asarray(test, np.float32), cv_scores=scores, method=method,
        members=[r.name for r in members], fit_seconds=time.perf_counter() - t0,
        params=int(sum(r.params or 0 for r in used)) or None,
        inference_ms_per_example=_sum([r.inference_ms_per_example for r in used]))
    return cand, est


def _backbones(cfg: Any, data: Any, results: list[CandidateResult]):
    """``(name, spec, options, backbone)`` of every backbone of the run that yields features."""
    from transfuse.backbones.registry import create_backbone
    from transfuse.run import backbone_options, short_name

    out = []
    for b in cfg.backbones:
        opts = backbone_options(cfg, b.options, cfg.data.modality)
        bb = create_backbone(b.name, **opts)
        if not getattr(bb, "is_raw_estimator", False):
            out.append((short_name(b.name), b.name, opts, bb))
    return out


def feature_estimator(cfg: Any, n_classes: int) -> Any:
    """The unfitted feature-fusion head that ``fuse.features`` describes."""
    from transfuse.fuse.features import FeatureFusionClassifier

    fo = cfg.fuse.features
    return FeatureFusionClassifier(proj_dim=fo.proj_dim, gate=fo.gate, head=fo.head, hidden=fo.hidden,
                                   dropout=fo.dropout, weight_decay=fo.weight_decay,
                                   max_iter=fo.max_iter, seed=cfg.seed, n_classes=n_classes)


def feature_blocks(data: Any, backbones: list, cache: Any, bs: int, progress: bool
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Cached train and test features per backbone (each from its own view of the data)."""
    from transfuse.data.multimodal import dataset_for

    tr = {n: cache.embed(bb, dataset_for(data.train, bb.modality), bs, progress) for n, _, _, bb in backbones}
    te = {n: cache.embed(bb, dataset_for(data.test, bb.modality), bs, progress) for n, _, _, bb in backbones}
    return tr, te


def feature_candidate(cfg: Any, data: Any, results: list[CandidateResult], cache: Any,
                      backbones: list, progress: bool) -> tuple[CandidateResult, Any]:
    """CV and refit of a feature-fusion head over the backbones' cached features."""
    from transfuse.fuse.cv import cross_val_features

    t0 = time.perf_counter()
    y, c = data.train.labels, len(data.train.classes)
    tr_blocks, te_blocks = feature_blocks(data, backbones, cache, cfg.train.embed_batch_size, progress)
    est = feature_estimator(cfg, c)
    res = cross_val_features(est, tr_blocks, y, data.folds, n_classes=c)
    oof = res["oof_probs"]
    final = est.fit(tr_blocks, y)
    test = final.predict_proba(te_blocks) if len(data.test) else np.zeros((0, c))
    by_backbone = {r.backbone: r for r in results if r.kind == "single"}
    singles = [by_backbone.get(bb.spec) for _, _, _, bb in backbones]
    head_params = sum(int(p.numel()) for p in final.net_.parameters())
    cand = CandidateResult(
        name="fusion/features", kind="fusion", oof=np.nan_to_num(oof).astype(np.float32),
        test=np.asarray(test, np.float32), cv_scores=[score(y[va], oof[va], cfg.evaluate.metric)
                                                      for _, va in data.folds],
        method="features", members=[n for n, *_ in backbones], fit_seconds=time.perf_counter() - t0,
        params=head_params + sum(sum(int(p.numel()) for p in bb.parameters()) for *_, bb in backbones),
        inference_ms_per_example=_sum([s.inference_ms_per_example if s else None for s in singles]))
    return cand, final


def pick_student(cfg: Any, results: list[CandidateResult], backbones: list) -> tuple:
    """``fuse.distill.student``, or the backbone of the fastest single candidate."""
    from transfuse.errors import UserError

    names = {n: (n, s, o, bb) for n, s, o, bb in backbones}
    student = cfg.fuse.distill.student
    if student is not None:
        key = student.removeprefix("bundled:")
        if key not in names:
            raise UserError(f"fuse.distill.student {student!r} is not a backbone of this run; "
                            f"valid: {', '.join(names)}")
        return names[key]
    singles = [r for r in results if r.kind == "single" and r.inference_ms_per_example is not None]
    if not singles:
        raise UserError("fuse.distill: no single candidate with a measured inference time; "
                        "set fuse.distill.student")
    fastest = min(singles, key=lambda r: r.inference_ms_per_example)
    return next(v for v in names.values() if v[3].spec == fastest.backbone)


def inner_folds(y: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds inside one outer fold's training rows (at least 2, at most the rarest
    class's count)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = max(2, min(n_splits, int(counts[counts > 0].min())))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def distill_candidate(cfg: Any, data: Any, teacher: CandidateResult, results: list[CandidateResult],
                      cache: Any, student: tuple, backbones: list, progress: bool
                      ) -> tuple[CandidateResult, Any]:
    """The feature-fusion teacher distilled into one backbone's linear head, scored honestly.

    A student learns from cross-fitted teacher probabilities (each row predicted by a teacher fitted
    without it). Its CV must not see the validation fold at all, not even through the teacher: a
    teacher fitted with fold k's rows hands the student their labels (measured: CV 0.96 vs 0.46
    honest). So for fold k the teacher is cross-fitted again on fold k's training rows only
    (inner folds); the shipped student learns from the run's own cross-fitted teacher
    probabilities (``teacher.oof``) on all rows."""
    from transfuse.data.multimodal import dataset_for
    from transfuse.errors import UserError
    from transfuse.fuse.cv import cross_val_features
    from transfuse.fuse.distill import DistilledProbe

    do = cfg.fuse.distill
    if do.mode != "probe":
        raise UserError("fuse.distill.mode: only 'probe' runs inside the pipeline for now; use "
                        "transfuse.fuse.distill.distill_finetune from Python for a fine-tuned student")
    name, _, _, bb = student
    t0 = time.perf_counter()
    y, c, bs = data.train.labels, len(data.train.classes), cfg.train.embed_batch_size
    X = cache.embed(bb, dataset_for(data.train, bb.modality), bs, progress)
    Xt = cache.embed(bb, dataset_for(data.test, bb.modality), bs, progress)
    blocks, _ = feature_blocks(data, backbones, cache, bs, progress)
    oof = np.zeros((len(y), c), np.float32)
    wd = cfg.train.head.weight_decay
    for k, (tr, va) in enumerate(data.folds):
        soft = cross_val_features(feature_estimator(cfg, c), {n: b[tr] for n, b in blocks.items()}, y[tr],
                                  inner_folds(y[tr], len(data.folds), cfg.seed + k), n_classes=c)["oof_probs"]
        st = DistilledProbe(c, do.temperature, do.alpha, wd, seed=cfg.seed + k)
        oof[va] = st.fit(X[tr], soft, y[tr]).predict_proba(X[va])
    final = DistilledProbe(c, do.temperature, do.alpha, wd, seed=cfg.seed).fit(X, teacher.oof, y)
    test = final.predict_proba(Xt) if len(Xt) else np.zeros((0, c))
    single = next((r for r in results if r.kind == "single" and r.backbone == bb.spec
                   and r.inference_ms_per_example is not None), None)
    cand = CandidateResult(
        name=f"distill/{name}", kind="distilled", oof=oof, test=np.asarray(test, np.float32),
        cv_scores=[score(y[va], oof[va], cfg.evaluate.metric) for _, va in data.folds],
        backbone=bb.spec, strategy="distill", method="distill", members=[teacher.name],
        fit_seconds=time.perf_counter() - t0,
        params=sum(int(p.numel()) for p in bb.parameters()) + X.shape[1] * c + c,
        inference_ms_per_example=single.inference_ms_per_example if single else None)
    return cand, final


def run_fusions(cfg: Any, data: Any, results: list[CandidateResult], run_dir: Path, cache: Any,
                progress: bool = True) -> list[CandidateResult]:
    """Try the configured fusions over ``results``; return them as candidates (saved, resumable)."""
    from transfuse.fuse.serving import save_ensemble, save_feature_fusion

    fc = cfg.fuse
    run_dir = Path(run_dir)
    y, classes, metric = data.train.labels, list(data.train.classes), cfg.evaluate.metric
    members, excluded = select_members(cfg, results, run_dir)
    for n, why in excluded.items():
        console.print(f"[yellow]fusion: leave out[/yellow] {n}: {why}")
    out: list[CandidateResult] = []

    def done(name: str) -> CandidateResult | None:
        r = CandidateResult.load(_folder(run_dir, name))
        if r is not None:
            console.print(f"[dim]resume: {name} already done (cv {r.cv_mean:.4f})[/dim]")
            out.append(r)
        return r

    def keep(cand: CandidateResult) -> None:
        cand.save(_folder(run_dir, cand.name))
        console.print(f"[bold]fusion[/bold] {cand.name}: cv {metric} {cand.cv_mean:.4f} ± {cand.cv_std:.4f}")
        out.append(cand)

    if len(members) >= 2:
        for method in fc.ensembles:
            if done(f"fusion/{method}"):
                continue
            cand, est = ensemble_candidate(method, members, y, data.folds, metric, cfg.seed)
            save_ensemble(_folder(run_dir, cand.name), method, est, cand.members,
                          [f"candidates/{safe_name(m)}" for m in cand.members], classes,
                          data.train.modality)
            keep(cand)
    backbones: list | None = None
    if fc.features.enabled and not done("fusion/features"):
        backbones = _backbones(cfg, data, results)
        if len(backbones) >= 2:
            cand, est = feature_candidate(cfg, data, results, cache, backbones, progress)
            save_feature_fusion(_folder(run_dir, cand.name), est,
                                [{"name": n, "spec": s, "options": o, "weights_hash": bb.weights_hash(),
                                  "modality": bb.modality} for n, s, o, bb in backbones],
                                classes, data.train.modality)
            keep(cand)
        else:
            excluded["fusion/features"] = "needs at least 2 backbones with features"
    teacher = next((r for r in out if r.name == "fusion/features"), None)
    if fc.distill.enabled and teacher is None:
        excluded["distill"] = "the teacher is the feature fusion (fuse.features), which did not run"
    elif fc.distill.enabled:
        backbones = backbones or _backbones(cfg, data, results)
        student = pick_student(cfg, results, backbones)
        if not done(f"distill/{student[0]}"):
            cand, head = distill_candidate(cfg, data, teacher, results, cache, student, backbones,
                                           progress)
            _, spec, opts, bb = student
            folder = _folder(run_dir, cand.name)
            save_head(folder, head)
            atomic_write_json(folder / "model.json", {
                "kind": "single", "modality": bb.modality, "classes": classes,
                "backbone": {"name": spec, "options": opts}, "strategy": "distill",
                "teacher": teacher.name, "weights_hash": bb.weights_hash(),
                "feature_dim": bb.feature_dim, "files": {"head": "head.safetensors"}})
            keep(cand)
    if fc.joint.enabled and not done("fusion/joint"):
        from transfuse.fuse.joint import joint_candidate

        backbones = backbones or _backbones(cfg, data, results)
        keep(joint_candidate(cfg, data, backbones, _folder(run_dir, "fusion/joint"), progress))
    atomic_write_json(run_dir / "fusion.json", {"members": [r.name for r in members],
                                                "excluded": excluded})
    return out
