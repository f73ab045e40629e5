"""The distilled student as a candidate: a fusion (the teacher) distilled into one backbone.

The student learns from the teacher's probabilities on the training rows (cross-fitted: each row
predicted by a teacher fitted without it) and on transfer rows (augmented views, unlabelled
inputs). Its CV sees nothing of the validation fold, not even through the teacher: for outer fold
k the teacher is refitted on fold k's training rows only, and views of fold k's validation rows
are left out (a teacher fitted with fold k's rows hands the student their labels: measured CV
0.96 vs 0.46 honest). A grid of temperatures/alphas/weight decays is chosen **inside** each outer
fold, by inner folds of its training rows (the teacher refitted again per inner fold), so the
outer score is of the whole procedure, selection included (nested CV). The shipped student uses
the setting the same inner selection picks over all training rows. ``mode: finetune`` selects the
setting with the probe student (cheap) and then fine-tunes the whole student with it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from transfuse.adapt.bag import folds_run
from transfuse.adapt.cross_fit import inner_folds, score
from transfuse.adapt.probe import make_head
from transfuse.adapt.raw import full_proba
from transfuse.adapt.result import CandidateResult
from transfuse.errors import UserError


def distill_settings(do: Any, head_weight_decay: float) -> dict[str, Any]:
    """``fuse.distill`` resolved: ``temperature``/``alpha``/``weight_decay`` as lists (weight decay
    defaults to ``head_weight_decay``)."""
    u = do.unlabelled
    wd = head_weight_decay if do.weight_decay is None else do.weight_decay
    return {"transfer_views": do.transfer_views,
            "unlabelled": u.model_dump() if u is not None else None,
            "max_unlabelled": do.max_unlabelled,
            "grid": [(float(t), float(a), float(w)) for t in np.atleast_1d(do.temperature)
                     for a in np.atleast_1d(do.alpha) for w in np.atleast_1d(wd)]}


def pick_teacher(fusions: list[CandidateResult], setting: str) -> CandidateResult | None:
    """``features``: the feature fusion; ``chosen``: the best fusion by CV (not the joint one, nor a
    soup)."""
    # not the joint fusion nor a soup: a teacher is refitted on cached features
    # nor a bag of only some folds: its out-of-fold rows on the others are zeros
    fusions = [r for r in fusions if r.kind == "fusion" and r.method != "joint" and r.strategy != "soup"
               and folds_run(r) is None]
    if setting == "features":
        return next((r for r in fusions if r.method == "features"), None)
    return max(fusions, key=lambda r: r.cv_mean, default=None)


def pick_student(student: str | None, results: list[CandidateResult], backbones: list) -> tuple:
    """``fuse.distill.student``, or the backbone of the best single candidate by CV."""
    names = {n: (n, s, o, bb) for n, s, o, bb in backbones}
    if student is not None:
        key = student.removeprefix("bundled:")
        if key not in names:
            raise UserError(f"fuse.distill.student {student!r} is not a backbone of this run; "
                            f"valid: {', '.join(names)}")
        return names[key]
    specs = {bb.spec for *_, bb in backbones}
    singles = [r for r in results if r.kind == "single" and r.backbone in specs]
    if not singles:
        raise UserError("fuse.distill: no single candidate on a backbone with features; set fuse.distill.student")
    best = max(singles, key=lambda r: r.cv_mean)
    return next(v for v in names.values() if v[3].spec == best.backbone)


def transfer_set(data: Any, opts: dict[str, Any], seed: int) -> tuple[list[Any], np.ndarray]:
    """The teacher-labelled extra inputs: ``(parts, source)``: augmented views, then unlabelled
    inputs; ``source[j]`` is the training row transfer row ``j`` was made from (-1: none)."""
    from transfuse.data.registry import check_options, load_dataset
    from transfuse.fuse.distill import augmented_views, unlabelled_inputs

    parts, source = [], []
    if opts["transfer_views"]:
        views, src = augmented_views(data.train, opts["transfer_views"], seed)
        parts.append(views)
        source.append(src)
    u = opts["unlabelled"]
    if u:
        check_options(u["source"], dict(u.get("options") or {}), "fuse.distill.unlabelled.options")
        pool = load_dataset(u["source"], u.get("path"), **dict(u.get("options") or {}))
        if pool.modality != data.train.modality:
            raise UserError(f"fuse.distill.unlabelled gives {pool.modality} inputs but the run's data "
                            f"is {data.train.modality}; use a source of the same modality")
        unl = unlabelled_inputs(pool, [data.train, data.test], list(data.train.classes),
                                opts["max_unlabelled"], seed)
        parts.append(unl)
        source.append(np.full(len(unl), -1, np.int64))
    return parts, (np.concatenate(source) if source else np.zeros(0, np.int64))


def _take(X: Any, idx: np.ndarray) -> Any:
    return X[idx] if isinstance(X, np.ndarray) else [X[int(i)] for i in idx]


class _RawMember:
    """A raw-estimator member (e.g. TF-IDF) with ``predict_proba`` over all ``n_classes``."""

    def __init__(self, estimator: Any, n_classes: int):
        self.estimator, self.n_classes = estimator, n_classes

    def fit(self, X: list, y: np.ndarray) -> _RawMember:
        from sklearn.base import clone

        self.fitted_ = clone(self.estimator).fit(X, y)
        return self

    def predict_proba(self, X: list) -> np.ndarray:
        return full_proba(self.fitted_, X, self.n_classes)


class Teacher:
    """A fusion that can be refitted on any subset of rows (training rows then transfer rows).

    ``members``: per ensemble member, its inputs over all rows and a factory ``seed -> model``;
    for a feature-fusion teacher, ``blocks`` (features over all rows) and ``make``."""

    def __init__(self, method: str, members: list[tuple[Any, Any]] | None = None,
                 blocks: dict[str, np.ndarray] | None = None, make: Any = None):
        self.method, self.members, self.blocks, self.make = method, members or [], blocks, make

    def probs(self, y: np.ndarray, fit_rows: np.ndarray, pred_rows: np.ndarray, n_classes: int, n_folds: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Refitted on ``fit_rows`` only: its cross-fitted probabilities on ``fit_rows`` and its
        probabilities on ``pred_rows``."""
        from transfuse.fuse.cv import cross_val_features
        from transfuse.fuse.ensemble import make_ensemble

        yf, folds = y[fit_rows], inner_folds(y[fit_rows], n_folds, seed)
        none = np.zeros((0, n_classes))
        if self.blocks is not None:
            sub = {n: b[fit_rows] for n, b in self.blocks.items()}
            soft = cross_val_features(self.make(seed), sub, yf, folds, n_classes=n_classes)["oof_probs"]
            pred = self.make(seed).fit(sub, yf).predict_proba(
                {n: b[pred_rows] for n, b in self.blocks.items()}) if len(pred_rows) else none
            return soft, pred
        oofs, preds = [], []
        for X, make in self.members:
            oof = np.zeros((len(fit_rows), n_classes))
            for k, (tr, va) in enumerate(folds):
                oof[va] = make(seed + k).fit(_take(X, fit_rows[tr]), yf[tr]).predict_proba(_take(X, fit_rows[va]))
            oofs.append(oof)
            full = make(seed).fit(_take(X, fit_rows), yf)
            preds.append(full.predict_proba(_take(X, pred_rows)) if len(pred_rows) else none)
        comb = make_ensemble(self.method, **({"seed": seed} if self.method == "stacking" else {})).fit(oofs, yf)
        return comb.predict_proba(oofs), (comb.predict_proba(preds) if len(pred_rows) else none)


def build_teacher(cfg: Any, data: Any, teacher: CandidateResult, results: list[CandidateResult],
                  parts: list[Any], feats: Any, backbones: list) -> Teacher:
    """The refittable teacher over the training rows followed by the transfer rows; ``feats(bb)``
    gives a backbone's features over those rows. UserError for a member that cannot be refitted."""
    from transfuse.backbones.registry import create_backbone, resolve_options, short_name
    from transfuse.data.multimodal import dataset_for
    from transfuse.fuse.candidates import feature_estimator

    c = len(data.train.classes)
    if teacher.method == "features":
        return Teacher("features", blocks={n: feats(bb) for n, _, _, bb in backbones},
                       make=lambda seed: feature_estimator(cfg.fuse.features, c, seed))
    by_spec = {bb.spec: bb for *_, bb in backbones}
    by_name = {r.name: r for r in results}
    members = []
    for m in teacher.members:
        r = by_name[m]
        if r.kind == "single" and r.strategy == "linear_probe" and r.backbone in by_spec:
            members.append((feats(by_spec[r.backbone]), lambda seed: make_head(cfg.train.head, c, seed)))
        elif r.kind == "baseline":
            b = next(b for b in cfg.backbones if short_name(b.name) == r.name)
            est = create_backbone(b.name, **resolve_options(b.options, cfg.data.modality, cfg.preprocess.image_size))
            X = [v.load(i) for d in [data.train, *parts] for v in [dataset_for(d, est.modality)]
                 for i in range(len(v))]
            members.append((X, lambda seed, est=est: _RawMember(est, c)))
        else:
            raise UserError(f"fuse.distill: teacher {teacher.name} member {m} ({r.strategy}) cannot be "
                            "refitted on cached features; set fuse.distill.teacher: features")
    return Teacher(teacher.method or "", members=members)


def distill_candidate(cfg: Any, data: Any, teacher_result: CandidateResult, results: list[CandidateResult],
                      cache: Any, student: tuple, backbones: list, progress: bool
                      ) -> tuple[CandidateResult, Any, dict[str, Any]]:
    """Nested CV of the distilled student, the shipped student (a fitted DistilledProbe, or the
    fine-tuned Classifier with ``mode: finetune``) and its settings."""
    from transfuse.data.multimodal import dataset_for
    from transfuse.fuse.distill import DistilledProbe, RowsDataset, distill_finetune

    do = cfg.fuse.distill
    opts = distill_settings(do, cfg.train.head.weight_decay)
    name, _, _, bb = student
    finetune = do.mode == "finetune"
    if finetune and not getattr(bb, "trainable", True):
        raise UserError(f"fuse.distill.mode: finetune needs a trainable student; {bb.spec} is frozen "
                        "(use mode: probe, or set fuse.distill.student to a trainable backbone)")
    t0 = time.perf_counter()
    y, c, bs, metric = data.train.labels, len(data.train.classes), cfg.train.embed_batch_size, cfg.evaluate.metric
    n, k_folds, grid = len(y), len(data.folds), opts["grid"]
    parts, source = transfer_set(data, opts, cfg.seed)
    y_all = np.concatenate([y, *[p.labels for p in parts]]).astype(np.int64)

    def feats(b: Any) -> np.ndarray:
        return np.concatenate([cache.embed(b, dataset_for(d, b.modality), bs, progress) for d in [data.train, *parts]])

    X = feats(bb)
    Xt = cache.embed(bb, dataset_for(data.test, bb.modality), bs, progress)
    teacher = build_teacher(cfg, data, teacher_result, results, parts, feats, backbones)
    transfer = np.arange(n, n + len(source))
    views = [dataset_for(d, bb.modality) for d in [data.train, *parts]]
    aug = getattr(cfg.augment, bb.modality, None)

    def fit(g: tuple, rows: np.ndarray, teach: np.ndarray, seed: int, whole: bool) -> Any:
        probe = DistilledProbe(c, *g, seed=seed).fit(X[rows], teach, y_all[rows])
        if not whole:
            return probe
        return distill_finetune(bb, RowsDataset(views, rows, y_all[rows]), teach, c, temperature=g[0],
                                alpha=g[1], epochs=do.epochs, lr=do.lr, head_lr=do.lr,
                                batch_size=do.batch_size, head_init=probe.to_linear(), augment=aug, seed=seed)

    def proba(model: Any, rows: np.ndarray | None) -> np.ndarray:
        if isinstance(model, DistilledProbe):
            return model.predict_proba(Xt if rows is None else X[rows])
        ds = data.test if rows is None else data.train.subset(rows)
        return model.predict_proba(dataset_for(ds, bb.modality), batch_size=bs) if len(ds) else np.zeros((0, c))

    def students(settings: list[tuple], rows: np.ndarray, seed: int, whole: bool) -> dict[tuple, Any]:
        """Students fitted on ``rows`` (+ their transfer rows) under a teacher refitted on them."""
        tf = transfer[(source == -1) | np.isin(source, rows)]
        soft, pt = teacher.probs(y_all, rows, tf, c, k_folds, seed)
        fit_rows, teach = np.concatenate([rows, tf]), np.concatenate([soft, pt])
        return {g: fit(g, fit_rows, teach, seed, whole) for g in settings}

    def select(rows: np.ndarray, seed: int) -> tuple[tuple, dict[str, float]]:
        """The setting with the best inner-CV score over ``rows`` (probe students)."""
        if len(grid) == 1:
            return grid[0], {}
        scores: dict[tuple, list[float]] = {g: [] for g in grid}
        for j, (itr, iva) in enumerate(inner_folds(y[rows], k_folds, seed)):
            for g, st in students(grid, rows[itr], seed + 100 * (j + 1), False).items():
                scores[g].append(score(y[rows[iva]], proba(st, rows[iva]), metric))
        best = max(grid, key=lambda g: float(np.mean(scores[g])))
        return best, {f"T={g[0]},alpha={g[1]},wd={g[2]}": float(np.mean(s)) for g, s in scores.items()}

    oof = np.zeros((n, c), np.float32)
    chosen = []
    for k, (tr, va) in enumerate(data.folds):
        g, _ = select(tr, cfg.seed + k)
        chosen.append({"temperature": g[0], "alpha": g[1], "weight_decay": g[2]})
        oof[va] = proba(students([g], tr, cfg.seed + k, finetune)[g], va)
    best, inner_cv = select(np.arange(n), cfg.seed)
    final = students([best], np.arange(n), cfg.seed, finetune)[best]
    single = next((r for r in results if r.kind == "single" and r.backbone == bb.spec
                   and r.inference_ms_per_example is not None), None)
    cand = CandidateResult(
        name=f"distill/{name}", kind="distilled", oof=oof, test=np.asarray(proba(final, None), np.float32),
        cv_scores=[score(y[va], oof[va], metric) for _, va in data.folds], backbone=bb.spec,
        strategy="distill", method="distill", members=[teacher_result.name], fit_seconds=time.perf_counter() - t0,
        params=sum(int(p.numel()) for p in bb.parameters()) + X.shape[1] * c + c,
        inference_ms_per_example=single.inference_ms_per_example if single else None,
        selected={"folds": chosen, "final": {"temperature": best[0], "alpha": best[1], "weight_decay": best[2]}})
    settings = {"mode": do.mode, "temperature": best[0], "alpha": best[1], "weight_decay": best[2],
                **({"epochs": do.epochs, "lr": do.lr} if finetune else {}),
                "n_transfer": len(source), "n_views": int((source >= 0).sum()),
                "n_unlabelled": int((source < 0).sum()), "inner_cv": inner_cv}
    return cand, final, settings
