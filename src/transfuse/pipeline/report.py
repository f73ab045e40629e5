"""The run's closing steps: the report, calibration of the chosen candidate, promotion to
``model/``, the HTML report and (``export.enabled``) the ONNX export."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from transfuse import __version__
from transfuse.adapt.bag import folds_run, is_bag
from transfuse.adapt.result import CandidateResult
from transfuse.artifacts.store import Prepared, RunFolder
from transfuse.faults import fault_point
from transfuse.io import atomic_write_json


def build_report(cfg: Any, run: RunFolder, data: Prepared, results: list[CandidateResult],
                 timings: dict[str, float]) -> dict[str, Any]:
    """Every candidate's CV (and test, read once) metrics; the chosen one by :func:`choose`."""
    from transfuse.evaluate.metrics import classification_metrics

    classes, ytest = data.train.classes, data.test.labels
    cands = []
    for r in results:
        c = r.summary()
        c["test"] = classification_metrics(ytest, r.test, classes) if len(ytest) else None
        cands.append(c)
    chosen, choice = choose(results)
    report = {
        "name": cfg.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "transfuse_version": __version__,
        "modality": cfg.data.modality,
        "metric": cfg.evaluate.metric,
        "task": {"classes": classes, "n_train": len(data.train), "n_test": len(data.test),
                 "class_counts": data.train.class_counts()},
        "config": cfg.model_dump(mode="json"),
        "cv": {"folds": len(data.folds), "seed": cfg.seed},
        "candidates": cands,
        "chosen": chosen.name,
        "test": next(c for c in cands if c["name"] == chosen.name)["test"],
        "quarantined": [q.to_dict() for q in data.quarantined],
        "outside_data_root": list(data.outside),
        "timings": timings,
        "run_dir": str(run.path),
    }
    if choice:
        report["choice"] = choice
    verdict = baseline_verdict(cands, cfg.evaluate.metric)
    if verdict:
        report["baseline"] = verdict
    return report


def choose(results: list[CandidateResult]) -> tuple[CandidateResult, list[dict[str, Any]]]:
    """The candidate that ships, and the paired comparisons that decided it.

    The best by CV mean among the candidates scored on every fold (a fold bag loses ties: its
    refit always ties it, one network against k at inference). A bag that ran only the first m
    folds (:func:`~transfuse.adapt.bag.folds_run`) then challenges it on those m folds' rows: it
    is chosen only if its score there beats the leader's on the same rows (best CV first). Every
    number compared comes from rows that no choice of its candidate was made on."""
    full = [r for r in results if folds_run(r) is None]
    some = sorted((r for r in results if folds_run(r) is not None), key=lambda r: -r.cv_mean)
    best = max(full, key=lambda r: (r.cv_mean, not is_bag(r))) if full else some.pop(0)
    trail: list[dict[str, Any]] = []
    for r in some:
        m = min(len(r.cv_scores), len(best.cv_scores))
        mine, theirs = float(np.mean(r.cv_scores[:m])), float(np.mean(best.cv_scores[:m]))
        trail.append({"challenger": r.name, "leader": best.name, "folds": m, "challenger_score": mine,
                      "leader_score": theirs, "chosen": r.name if mine > theirs else best.name})
        if mine > theirs:
            best = r
    return best, trail


def baseline_verdict(cands: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The best no-transfer baseline against the best transferred single candidate, by CV:
    ``{baseline, baseline_cv, transfer, transfer_cv, transfer_loses, message}``; None when the run
    lacks either."""
    base = [c for c in cands if c["kind"] == "baseline"]
    singles = [c for c in cands if c["kind"] == "single"]
    if not base or not singles:
        return None
    b = max(base, key=lambda c: c["cv_mean"])
    t = max(singles, key=lambda c: c["cv_mean"])
    loses = b["cv_mean"] > t["cv_mean"]
    if loses:
        msg = (f"transfer loses to the no-transfer baseline: {b['name']} (CV {metric} {b['cv_mean']:.4f}) beats the "
               f"best transferred candidate {t['name']} (CV {t['cv_mean']:.4f}); the pretrained features do not fit "
               "this data: use the baseline, or try fine-tuning or another backbone")
    else:
        msg = (f"transfer beats the no-transfer baseline: {t['name']} (CV {metric} {t['cv_mean']:.4f}) over "
               f"{b['name']} (CV {b['cv_mean']:.4f})")
    return {"baseline": b["name"], "baseline_cv": b["cv_mean"], "transfer": t["name"], "transfer_cv": t["cv_mean"],
            "transfer_loses": loses, "message": msg}


def misclassified(test: Any, proba: Any, classes: list[str], k: int = 8) -> list[dict[str, Any]]:
    """Up to ``k`` test examples the chosen model gets wrong, the most confident mistakes first:
    ``{input, true, predicted, confidence}`` (``input``: the file path, or the text cut to 300
    characters)."""
    import numpy as np

    if not len(test) or proba is None or not len(proba):
        return []
    p = np.asarray(proba)
    pred = p.argmax(axis=1)
    wrong = np.flatnonzero(pred != np.asarray(test.labels))
    wrong = wrong[np.argsort(-p[wrong, pred[wrong]], kind="stable")][:k]
    out = []
    for i in wrong:
        item = test.items[i]
        text = item if isinstance(item, str) else str(item)
        out.append({"input": text if len(text) <= 300 else text[:299] + "…", "true": classes[int(test.labels[i])],
                    "predicted": classes[int(pred[i])], "confidence": float(p[i, pred[i]])})
    return out


def calibrate(cfg: Any, data: Prepared, chosen: CandidateResult, report: dict[str, Any]) -> float | None:
    """Temperature scaling of the chosen candidate, fitted on its out-of-fold probabilities:
    adds ``report["calibration"]`` (ECE before/after on OOF and test) and returns T."""
    if not cfg.calibration.enabled:
        return None
    from transfuse.evaluate.calibration import calibrate_candidate

    rows = np.arange(len(data.train.labels))
    if (part := folds_run(chosen)) is not None:  # its scored rows only: the others' are zeros
        rows = np.sort(np.concatenate([va for _, va in data.folds[: part[0]]]))
    t, report["calibration"] = calibrate_candidate(data.train.labels[rows], chosen.oof[rows], data.test.labels,
                                                   chosen.test, data.train.classes, cfg.calibration.n_bins)
    if part is not None:
        report["calibration"]["fitted_on"] += f" (the {len(rows)} rows of the {part[0]} folds it ran)"
    return t


def finish(cfg: Any, run: RunFolder, data: Prepared, results: list[CandidateResult],
           report: dict[str, Any]) -> None:
    """Calibrate and promote the chosen candidate, write the reports, export if asked."""
    from transfuse.evaluate.calibration import apply_temperature
    from transfuse.evaluate.report_html import write_report_html

    chosen = next(r for r in results if r.name == report["chosen"])
    t = calibrate(cfg, data, chosen, report)
    test_proba = chosen.test if t is None or not len(chosen.test) else apply_temperature(chosen.test, t)
    run.promote(chosen.name, test_proba, t)
    report["misclassified"] = misclassified(data.test, test_proba, list(data.train.classes))
    if cfg.export.enabled:
        from transfuse.export.onnx import export_run

        e = cfg.export
        report["export"] = export_run(run.path, int8=e.int8, tolerance=e.tolerance, opset=e.opset,
                                      parity_samples=e.parity_samples, int8_method=e.int8_method)
    fault_point("report")
    atomic_write_json(run.path / "report.json", report)
    write_report_html(report, run.path)
    from transfuse.artifacts.card import write_model_card

    try:
        write_model_card(run.path, report)
    except Exception as e:  # noqa: BLE001  (the model and reports are saved; the card is their summary)
        from transfuse.progress import console

        console.print(f"warning: model card not written ({type(e).__name__}: {e}); the model and "
                      "report.json are complete", soft_wrap=True)
