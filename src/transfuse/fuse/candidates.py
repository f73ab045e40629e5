"""Fusions as candidates, scored like the rest (the run's outer folds, each scored once).

- ``fusion/<method>``: a prediction-level ensemble over the single candidates' out-of-fold
  probabilities; its CV is nested (:func:`~transfuse.fuse.cv.cross_val_fusion`: weights or the
  stacking layer fitted on the other folds' OOF rows, scored on this fold's); the shipped ensemble
  is refitted on all OOF rows and applied to the members' test probabilities.
- ``fusion/features``: one :class:`~transfuse.fuse.features.FeatureFusionClassifier` over the
  cached features of the run's backbones, cross-fitted on the run's folds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from transfuse.adapt.cross_fit import score
from transfuse.adapt.result import CandidateResult

if TYPE_CHECKING:
    from transfuse.config import FeatureFusionOptions, FuseConfig


def _sum(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return float(sum(known)) if known else None


def select_members(fc: FuseConfig, results: list[CandidateResult]) -> tuple[list[CandidateResult], dict[str, str]]:
    """The single candidates (and raw baselines) to fuse, best CV first, and ``{name: reason}``
    for those left out (broken probabilities, beyond ``fuse.max_members``, a bag of only some
    folds, or a backbone's linear probe beside its multi-layer probe). A fold bag stands
    in for its candidate where the time limit left that candidate's refit out (otherwise the two
    would be one member twice: the same out-of-fold rows)."""
    from transfuse.adapt.bag import folds_run, stand_ins
    from transfuse.fuse.cv import screen_members

    excluded: dict[str, str] = {}
    for r in results:
        if (part := folds_run(r)) is not None:
            excluded[r.name] = (f"scored on {part[0]} of {part[1]} folds only (time limit): no out-of-fold "
                                "predictions on the other folds' rows")
    pool = [r for r in results if r.kind in ("single", "baseline")] + stand_ins(results)
    kept, bad = screen_members({r.name: r.oof for r in pool})
    kept_test, _ = screen_members({r.name: r.test for r in pool if r.name in kept and len(r.test)})
    for r in pool:
        if r.name in kept and len(r.test) and r.name not in kept_test:
            bad[r.name] = "test probabilities hold NaN/inf or bad rows"
    excluded.update(bad)
    for r in pool:  # a probe nested in a member: the multi-layer view's last columns are its features
        wider = r.name.removesuffix("/linear_probe") + "/multilayer_probe"
        if r.name.endswith("/linear_probe") and wider in kept and wider not in bad:
            excluded[r.name] = f"its features are the last columns of {wider}'s, a member"
    members = sorted((r for r in pool if r.name not in excluded), key=lambda r: -r.cv_mean)
    if fc.max_members is not None:
        for r in members[fc.max_members:]:
            excluded[r.name] = f"not among the best fuse.max_members={fc.max_members} by CV"
        members = members[: fc.max_members]
    return members, excluded


def ensemble_candidate(method: str, members: list[CandidateResult], y: np.ndarray, folds: list,
                       metric: str, seed: int = 0) -> tuple[CandidateResult, Any]:
    """Nested-CV scores, OOF and test probabilities of one prediction-level fusion, and the
    ensemble fitted on all OOF rows (what ships)."""
    from transfuse.fuse.cv import cross_val_fusion

    t0 = time.perf_counter()
    params = {"seed": seed} if method == "stacking" else {}
    res = cross_val_fusion(method, {r.name: r.oof for r in members}, y, folds, **params)
    est = res["estimator"]
    n_test = len(members[0].test)
    test = est.predict_proba([r.test for r in members]) if n_test else \
        np.zeros((0, members[0].oof.shape[1]))
    oof = res["oof_probs"]
    used = [r for r, w in zip(members, getattr(est, "weights_", np.ones(len(members))), strict=True) if w > 0]
    cand = CandidateResult(
        name=f"fusion/{method}", kind="fusion", oof=np.nan_to_num(oof).astype(np.float32),
        test=np.asarray(test, np.float32), cv_scores=[score(y[va], oof[va], metric) for _, va in folds],
        method=method, members=[r.name for r in members], fit_seconds=time.perf_counter() - t0,
        params=int(sum(r.params or 0 for r in used)) or None,
        inference_ms_per_example=_sum([r.inference_ms_per_example for r in used]))
    return cand, est


def feature_estimator(fo: FeatureFusionOptions, n_classes: int, seed: int) -> Any:
    """The unfitted feature-fusion head that ``fuse.features`` describes."""
    from transfuse.fuse.features import FeatureFusionClassifier

    return FeatureFusionClassifier(**fo.model_dump(exclude={"enabled", "seed"}), seed=seed, n_classes=n_classes)


def feature_candidate(fo: FeatureFusionOptions, blocks: dict[str, np.ndarray], test_blocks: dict[str, np.ndarray],
                      y: np.ndarray, folds: list, n_classes: int, metric: str, seed: int
                      ) -> tuple[CandidateResult, Any]:
    """Cross-fitted CV and the refit of a feature-fusion head over cached feature blocks."""
    from transfuse.fuse.cv import cross_val_features

    t0 = time.perf_counter()
    est = feature_estimator(fo, n_classes, seed)
    oof = cross_val_features(est, blocks, y, folds, n_classes=n_classes)["oof_probs"]
    final = est.fit(blocks, y)
    n_test = len(next(iter(test_blocks.values())))
    test = final.predict_proba(test_blocks) if n_test else np.zeros((0, n_classes))
    cand = CandidateResult(
        name="fusion/features", kind="fusion", oof=np.nan_to_num(oof).astype(np.float32),
        test=np.asarray(test, np.float32), cv_scores=[score(y[va], oof[va], metric) for _, va in folds],
        method="features", members=list(blocks), fit_seconds=time.perf_counter() - t0,
        params=sum(int(p.numel()) for p in final.net_.parameters()))
    return cand, final
