"""Fusion as a pipeline step: every fusion becomes one more candidate, chosen by CV like the rest.

``run_fusions`` (called by :func:`transfuse.run.run_experiment` when ``fuse.enabled``) builds:

- ``fusion/<method>`` for each ``fuse.ensembles`` method over the single candidates' out-of-fold
  probabilities. Its CV is nested (:func:`~transfuse.fuse.cv.cross_val_fusion`: fitted on the other
  folds' OOF rows, scored on this fold's); the shipped ensemble is refitted on all OOF rows and
  applied to the members' test probabilities.
- ``fusion/features``: one :class:`~transfuse.fuse.features.FeatureFusionClassifier` over the cached
  features of the run's backbones (several modalities for multimodal data), CV on the run's folds.
- ``distill/<backbone>`` (``fuse.distill.enabled``): the CV-chosen fusion distilled into the best
  single candidate's backbone, on the training rows plus a teacher-labelled transfer set (its CV
  refits the teacher inside each fold: see :func:`distill_candidate`).
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

from transfuse.candidates import (
    CandidateResult,
    full_proba,
    head_from_config,
    safe_name,
    save_head,
    save_weights,
    score,
)
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


def distill_settings(do: Any, head_weight_decay: float) -> dict[str, Any]:
    """``fuse.distill`` resolved (see :class:`transfuse.fuse.config.DistillOptions`): ``unlabelled``
    as a plain dict and ``temperature``/``alpha``/``weight_decay`` as lists (one combination is then
    picked by the student's CV; weight decay defaults to ``head_weight_decay``)."""
    u = do.unlabelled
    wd = head_weight_decay if do.weight_decay is None else do.weight_decay
    return {"teacher": do.teacher,
            "transfer_views": do.transfer_views,
            "unlabelled": u.model_dump() if u is not None else None,
            "max_unlabelled": do.max_unlabelled,
            "temperatures": [float(t) for t in np.atleast_1d(do.temperature)],
            "alphas": [float(a) for a in np.atleast_1d(do.alpha)],
            "weight_decays": [float(w) for w in np.atleast_1d(wd)]}


def pick_student(cfg: Any, results: list[CandidateResult], backbones: list) -> tuple:
    """``fuse.distill.student``, or the backbone of the best single candidate by CV (a student
    costs one backbone; the best one has the most to start from)."""
    from transfuse.errors import UserError

    names = {n: (n, s, o, bb) for n, s, o, bb in backbones}
    student = cfg.fuse.distill.student
    if student is not None:
        key = student.removeprefix("bundled:")
        if key not in names:
            raise UserError(f"fuse.distill.student {student!r} is not a backbone of this run; "
                            f"valid: {', '.join(names)}")
        return names[key]
    specs = {bb.spec for *_, bb in backbones}
    singles = [r for r in results if r.kind == "single" and r.backbone in specs]
    if not singles:
        raise UserError("fuse.distill: no single candidate on a backbone with features; "
                        "set fuse.distill.student")
    best = max(singles, key=lambda r: r.cv_mean)
    return next(v for v in names.values() if v[3].spec == best.backbone)


def inner_folds(y: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds inside one outer fold's training rows (at least 2, at most the rarest
    class's count)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = max(2, min(n_splits, int(counts[counts > 0].min())))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def transfer_set(cfg: Any, data: Any, opts: dict[str, Any]) -> tuple[list[Any], np.ndarray]:
    """The teacher-labelled extra inputs: ``(parts, source)``, ``parts`` a list of datasets
    (augmented views, then unlabelled inputs), ``source[j]`` the training row transfer row ``j``
    was made from (``-1``: unlabelled, from no training row)."""
    from transfuse.data.registry import load_dataset
    from transfuse.errors import UserError
    from transfuse.fuse.distill import augmented_views, unlabelled_inputs

    parts, source = [], []
    if opts["transfer_views"]:
        views, src = augmented_views(data.train, opts["transfer_views"], cfg.seed)
        parts.append(views)
        source.append(src)
    u = opts["unlabelled"]
    if u:
        u = dict(u)
        pool = load_dataset(u["source"], u.get("path"), **dict(u.get("options") or {}))
        if pool.modality != data.train.modality:
            raise UserError(f"fuse.distill.unlabelled gives {pool.modality} inputs but the run's data "
                            f"is {data.train.modality}; use a source of the same modality")
        unl = unlabelled_inputs(pool, [data.train, data.test], list(data.train.classes),
                                opts["max_unlabelled"], cfg.seed)
        parts.append(unl)
        source.append(np.full(len(unl), -1, np.int64))
    return parts, (np.concatenate(source) if source else np.zeros(0, np.int64))


def _take(X: Any, idx: np.ndarray) -> Any:
    return X[idx] if isinstance(X, np.ndarray) else [X[int(i)] for i in idx]


class _RawMember:
    """A raw-estimator baseline (e.g. TF-IDF) with ``predict_proba`` over all ``n_classes``."""

    def __init__(self, estimator: Any, n_classes: int):
        self.estimator, self.n_classes = estimator, n_classes

    def fit(self, X: list, y: np.ndarray) -> _RawMember:
        from sklearn.base import clone

        self.fitted_ = clone(self.estimator).fit(X, y)
        return self

    def predict_proba(self, X: list) -> np.ndarray:
        return full_proba(self.fitted_, X, self.n_classes)


def teacher_inputs(cfg: Any, data: Any, teacher: CandidateResult, results: list[CandidateResult],
                   parts: list[Any], cache: Any, backbones: list, progress: bool) -> dict[str, Any]:
    """What :func:`teacher_probs` refits the teacher from, over the training rows followed by the
    transfer rows: per member (ensembles: each member candidate; feature fusion: each backbone)
    its inputs and an unfitted model. Raises UserError for a member that cannot be refitted."""
    from transfuse.backbones.registry import create_backbone
    from transfuse.data.multimodal import dataset_for
    from transfuse.errors import UserError
    from transfuse.run import backbone_options, short_name

    c, bs = len(data.train.classes), cfg.train.embed_batch_size

    def feats(bb: Any) -> np.ndarray:
        return np.concatenate([cache.embed(bb, dataset_for(d, bb.modality), bs, progress)
                               for d in [data.train, *parts]])

    if teacher.method == "features":
        return {"kind": "features", "blocks": {n: feats(bb) for n, _, _, bb in backbones}}
    by_spec = {bb.spec: bb for *_, bb in backbones}
    by_name = {r.name: r for r in results}
    members = []
    for m in teacher.members:
        r = by_name[m]
        if r.kind == "single" and r.strategy == "linear_probe" and r.backbone in by_spec:
            members.append((feats(by_spec[r.backbone]),
                            lambda seed: head_from_config(cfg, c, seed)))
        elif r.kind == "baseline":
            b = next(b for b in cfg.backbones if short_name(b.name) == r.name)
            est = create_backbone(b.name, **backbone_options(cfg, b.options, cfg.data.modality))
            X = [v.load(i) for d in [data.train, *parts] for v in [dataset_for(d, est.modality)]
                 for i in range(len(v))]
            members.append((X, lambda seed, est=est: _RawMember(est, c)))
        else:
            raise UserError(f"fuse.distill: teacher {teacher.name} member {m} ({r.strategy}) cannot be "
                            "refitted on cached features; set fuse.distill.teacher: features")
    return {"kind": "ensemble", "method": teacher.method, "members": members}


def teacher_probs(cfg: Any, inputs: dict[str, Any], y: np.ndarray, fit_rows: np.ndarray,
                  pred_rows: np.ndarray, folds: list, n_classes: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The teacher refitted on ``fit_rows`` only: its cross-fitted probabilities on ``fit_rows``
    (over ``folds``, indices into ``fit_rows``) and its probabilities on ``pred_rows``."""
    from transfuse.fuse.cv import cross_val_features
    from transfuse.fuse.ensemble import make_ensemble

    yf = y[fit_rows]
    if inputs["kind"] == "features":
        blocks = inputs["blocks"]
        est = feature_estimator(cfg, n_classes)
        soft = cross_val_features(est, {n: b[fit_rows] for n, b in blocks.items()}, yf, folds,
                                  n_classes=n_classes)["oof_probs"]
        pred = est.fit({n: b[fit_rows] for n, b in blocks.items()}, yf).predict_proba(
            {n: b[pred_rows] for n, b in blocks.items()}) if len(pred_rows) else np.zeros((0, n_classes))
        return soft, pred
    oofs, preds = [], []
    for X, make in inputs["members"]:
        oof = np.zeros((len(fit_rows), n_classes))
        for k, (tr, va) in enumerate(folds):
            oof[va] = make(seed + k).fit(_take(X, fit_rows[tr]), yf[tr]).predict_proba(_take(X, fit_rows[va]))
        oofs.append(oof)
        full = make(seed).fit(_take(X, fit_rows), yf)
        preds.append(full.predict_proba(_take(X, pred_rows)) if len(pred_rows) else np.zeros((0, n_classes)))
    params = {"seed": seed} if inputs["method"] == "stacking" else {}
    comb = make_ensemble(inputs["method"], **params).fit(oofs, yf)
    pred = comb.predict_proba(preds) if len(pred_rows) else np.zeros((0, n_classes))
    return comb.predict_proba(oofs), pred


def pick_teacher(out: list[CandidateResult], setting: str) -> CandidateResult | None:
    """``features``: the feature fusion; ``chosen``: the best fusion by CV."""
    fusions = [r for r in out if r.kind == "fusion" and r.method != "joint"]
    if setting == "features":
        return next((r for r in fusions if r.method == "features"), None)
    return max(fusions, key=lambda r: r.cv_mean, default=None)


def distill_candidate(cfg: Any, data: Any, teacher: CandidateResult, results: list[CandidateResult],
                      cache: Any, student: tuple, backbones: list, progress: bool
                      ) -> tuple[CandidateResult, Any]:
    """The teacher distilled into one backbone's linear head, scored honestly.

    The student learns from the teacher's probabilities on the training rows (cross-fitted: each
    row predicted by a teacher fitted without it) and on the transfer rows (:func:`transfer_set`).
    Its CV must not see the validation fold at all, not even through the teacher: a teacher fitted
    with fold k's rows hands the student their labels (measured: CV 0.96 vs 0.46 honest). So for
    fold k the teacher is refitted on fold k's training rows only (cross-fitted again on inner
    folds), and augmented views of fold k's validation rows are left out. With several
    temperatures/alphas, the pair with the best CV mean is kept (its OOF is the candidate's).

    ``mode: finetune`` starts from that distilled head and fine-tunes the whole student on the same
    rows and soft labels (:func:`~transfuse.fuse.distill.distill_finetune`, ``epochs``/``lr``/
    ``batch_size``; head at the backbone's lr, as in LP-FT), once per fold and grid point and once
    on all rows: the second element returned is then the fine-tuned Classifier."""
    from transfuse.data.multimodal import dataset_for
    from transfuse.fuse.distill import DistilledProbe, RowsDataset, distill_finetune

    do = cfg.fuse.distill
    opts = distill_settings(do, cfg.train.head.weight_decay)
    name, _, _, bb = student
    finetune = do.mode == "finetune"
    if finetune and not getattr(bb, "trainable", True):
        from transfuse.errors import UserError

        raise UserError(f"fuse.distill.mode: finetune needs a trainable student; {bb.spec} is frozen "
                        "(use mode: probe, or set fuse.distill.student to a trainable backbone)")
    t0 = time.perf_counter()
    y, c, bs = data.train.labels, len(data.train.classes), cfg.train.embed_batch_size
    n = len(y)
    parts, source = transfer_set(cfg, data, opts)
    y_all = np.concatenate([y, *[p.labels for p in parts]]).astype(np.int64)
    X = np.concatenate([cache.embed(bb, dataset_for(d, bb.modality), bs, progress)
                        for d in [data.train, *parts]])
    Xt = cache.embed(bb, dataset_for(data.test, bb.modality), bs, progress)
    inputs = teacher_inputs(cfg, data, teacher, results, parts, cache, backbones, progress)
    transfer = np.arange(n, n + len(source))
    grid = [(t, a, w) for t in opts["temperatures"] for a in opts["alphas"] for w in opts["weight_decays"]]
    oofs = {g: np.zeros((n, c), np.float32) for g in grid}
    views = [dataset_for(d, bb.modality) for d in [data.train, *parts]]
    aug = getattr(cfg.augment, bb.modality, None)

    def fit(g: tuple, rows: np.ndarray, teach: np.ndarray, seed: int) -> Any:
        probe = DistilledProbe(c, *g, seed=seed).fit(X[rows], teach, y_all[rows])
        if not finetune:
            return probe
        return distill_finetune(bb, RowsDataset(views, rows, y_all[rows]), teach, c, temperature=g[0],
                                alpha=g[1], epochs=do.epochs, lr=do.lr, head_lr=do.lr,
                                batch_size=do.batch_size, head_init=probe.to_linear(), augment=aug,
                                seed=seed)

    def proba(model: Any, feats: np.ndarray, ds: Any) -> np.ndarray:
        if not finetune:
            return model.predict_proba(feats)
        return model.predict_proba(dataset_for(ds, bb.modality), batch_size=bs) if len(ds) else np.zeros((0, c))

    for k, (tr, va) in enumerate(data.folds):
        tf = transfer[(source == -1) | np.isin(source, tr)]
        soft, pt = teacher_probs(cfg, inputs, y_all, tr, tf, inner_folds(y[tr], len(data.folds), cfg.seed + k),
                                 c, cfg.seed + k)
        rows = np.concatenate([tr, tf])
        for g in grid:
            st = fit(g, rows, np.concatenate([soft, pt]), cfg.seed + k)
            oofs[g][va] = proba(st, X[va], data.train.subset(va))
    cv = {g: [score(y[va], o[va], cfg.evaluate.metric) for _, va in data.folds] for g, o in oofs.items()}
    best = max(grid, key=lambda g: float(np.mean(cv[g])))
    soft, pt = teacher_probs(cfg, inputs, y_all, np.arange(n), transfer, data.folds, c, cfg.seed)
    final = fit(best, np.arange(len(y_all)), np.concatenate([soft, pt]), cfg.seed)
    test = proba(final, Xt, data.test) if len(Xt) else np.zeros((0, c))
    single = next((r for r in results if r.kind == "single" and r.backbone == bb.spec
                   and r.inference_ms_per_example is not None), None)
    cand = CandidateResult(
        name=f"distill/{name}", kind="distilled", oof=oofs[best], test=np.asarray(test, np.float32),
        cv_scores=cv[best], backbone=bb.spec, strategy="distill", method="distill",
        members=[teacher.name], fit_seconds=time.perf_counter() - t0,
        params=sum(int(p.numel()) for p in bb.parameters()) + X.shape[1] * c + c,
        inference_ms_per_example=single.inference_ms_per_example if single else None)
    final.settings_ = {"mode": do.mode, "temperature": best[0], "alpha": best[1], "weight_decay": best[2],
                       **({"epochs": do.epochs, "lr": do.lr} if finetune else {}),
                       "n_transfer": len(source),
                       "n_views": int((source >= 0).sum()), "n_unlabelled": int((source < 0).sum()),
                       "grid_cv": {f"T={t},alpha={a}" + (f",wd={w}" if len(opts["weight_decays"]) > 1 else ""):
                                   float(np.mean(s)) for (t, a, w), s in cv.items()}}
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
    teacher = pick_teacher(out, fc.distill.teacher) if fc.distill.enabled else None
    if fc.distill.enabled and teacher is None:
        excluded["distill"] = "no fusion ran to teach a student (fuse.ensembles / fuse.features)"
    elif fc.distill.enabled:
        backbones = backbones or _backbones(cfg, data, results)
        student = pick_student(cfg, results, backbones)
        if not done(f"distill/{student[0]}"):
            cand, head = distill_candidate(cfg, data, teacher, results, cache, student, backbones,
                                           progress)
            _, spec, opts, bb = student
            folder = _folder(run_dir, cand.name)
            if fc.distill.mode == "finetune":  # the whole fine-tuned student
                save_weights(folder / "model.safetensors", head)
                files = {"model": "model.safetensors"}
            else:
                save_head(folder, head)
                files = {"head": "head.safetensors"}
            atomic_write_json(folder / "model.json", {
                "kind": "single", "modality": bb.modality, "classes": classes,
                "backbone": {"name": spec, "options": opts}, "strategy": "distill",
                "teacher": teacher.name, "distill": getattr(head, "settings_", {}),
                "weights_hash": bb.weights_hash(),
                "feature_dim": bb.feature_dim, "files": files})
            keep(cand)
    if fc.joint.enabled and not done("fusion/joint"):
        from transfuse.fuse.joint import joint_candidate

        backbones = backbones or _backbones(cfg, data, results)
        keep(joint_candidate(cfg, data, backbones, _folder(run_dir, "fusion/joint"), progress))
    atomic_write_json(run_dir / "fusion.json", {"members": [r.name for r in members],
                                                "excluded": excluded})
    return out
