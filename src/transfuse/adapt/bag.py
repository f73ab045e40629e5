"""The fold bag of a fine-tuned candidate (``adapt.bag``): its k fold models as one more candidate.

No model is trained for it. The cross-fit loop already trained one model per outer fold (on the
inner-training part of the fold's training rows, epoch chosen on the inner validation part) and
scored each on its outer fold once; the bag keeps those k models, serves the mean of their
probabilities (:class:`~transfuse.train.bag.FoldBag`), and its CV is the candidate's own
out-of-fold predictions: the same rows, the same numbers as the refitted candidate beside it.
Its test probabilities are the mean of the fold models' on the test part, computed once.

A bag loses every CV tie (it always ties its refit: k networks at inference against one), so it
is chosen only where its refit did not run: under a time limit, when the refit did not fit or was
stopped, the bag ships instead of the candidate being dropped.
"""

from __future__ import annotations

from typing import Any

from transfuse.adapt.result import CandidateResult

#: The strategy (and name prefix) of a fold bag candidate.
BAG = "bag"


def bag_name(candidate: str) -> str:
    """``bag/<candidate>`` (e.g. ``bag/minilm_l3/lp_ft``)."""
    return f"{BAG}/{candidate}"


def is_bag(result: Any) -> bool:
    return getattr(result, "strategy", None) == BAG


def bag_result(name: str, cv: Any, backbone: str | None, params: int | None,
               inference_ms: float | None) -> CandidateResult:
    """The bag of candidate ``name`` from its :class:`~transfuse.adapt.cross_fit.CrossFit` (made
    with ``bag=True``): the same out-of-fold probabilities and fold scores, the fold models' mean
    test probabilities; ``params``/``inference_ms``: of one fold network (the bag has k)."""
    k = len(cv.folds)
    selected: dict[str, Any] = {"folds": cv.fold_chosen}
    if cv.refit_skipped:
        selected["refit_skipped"] = cv.refit_skipped
    if cv.folds_run is not None:
        selected["folds_run"] = [cv.folds_run, cv.folds_total]
    return CandidateResult(
        name=bag_name(name), kind="fusion", oof=cv.oof, test=cv.fold_test, cv_scores=list(cv.scores),
        backbone=backbone, strategy=BAG, method="mean", members=[name], history=cv.history,
        fit_seconds=cv.fold_seconds, params=k * params if params is not None else None,
        inference_ms_per_example=k * inference_ms if inference_ms is not None else None, selected=selected)


def folds_run(result: Any) -> tuple[int, int] | None:
    """``(m, k)`` for a candidate that ran only the first ``m`` of the ``k`` outer folds (a time
    limit's plan): scored on those folds' rows only, its other out-of-fold rows are zeros. None:
    every fold ran."""
    v = (getattr(result, "selected", None) or {}).get("folds_run")
    return (int(v[0]), int(v[1])) if v else None


def stand_ins(results: list[CandidateResult]) -> list[CandidateResult]:
    """The bags whose refitted candidate is not among ``results`` (its refit did not run): they
    stand in for it wherever the run uses its candidates' predictions (fusion members); not a bag
    of only some folds (it has no out-of-fold rows on the others)."""
    names = {r.name for r in results}
    return [r for r in results if is_bag(r) and not set(r.members or []) <= names and folds_run(r) is None]
