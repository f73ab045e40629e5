"""The run's closing steps: the report, calibration of the chosen candidate, promotion to
``model/``, the HTML report and (``export.enabled``) the ONNX export."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from transfuse import __version__
from transfuse.adapt.result import CandidateResult
from transfuse.artifacts.store import Prepared, RunFolder
from transfuse.faults import fault_point
from transfuse.io import atomic_write_json


def build_report(cfg: Any, run: RunFolder, data: Prepared, results: list[CandidateResult],
                 timings: dict[str, float]) -> dict[str, Any]:
    """Every candidate's CV (and test, read once) metrics; the chosen one is the best by CV."""
    from transfuse.evaluate.metrics import classification_metrics

    classes, ytest = data.train.classes, data.test.labels
    cands = []
    for r in results:
        c = r.summary()
        c["test"] = classification_metrics(ytest, r.test, classes) if len(ytest) else None
        cands.append(c)
    chosen = max(results, key=lambda r: r.cv_mean)
    return {
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


def calibrate(cfg: Any, data: Prepared, chosen: CandidateResult, report: dict[str, Any]) -> float | None:
    """Temperature scaling of the chosen candidate, fitted on its out-of-fold probabilities:
    adds ``report["calibration"]`` (ECE before/after on OOF and test) and returns T."""
    if not cfg.calibration.enabled:
        return None
    from transfuse.evaluate.calibration import calibrate_candidate

    t, report["calibration"] = calibrate_candidate(data.train.labels, chosen.oof, data.test.labels, chosen.test,
                                                   data.train.classes, cfg.calibration.n_bins)
    return t


def finish(cfg: Any, run: RunFolder, data: Prepared, results: list[CandidateResult],
           report: dict[str, Any]) -> None:
    """Calibrate and promote the chosen candidate, write the reports, export if asked."""
    from transfuse.evaluate.calibration import apply_temperature
    from transfuse.evaluate.report_html import write_report_html

    chosen = next(r for r in results if r.name == report["chosen"])
    t = calibrate(cfg, data, chosen, report)
    run.promote(chosen.name, chosen.test if t is None or not len(chosen.test)
                else apply_temperature(chosen.test, t), t)
    if cfg.export.enabled:
        from transfuse.export.onnx import export_run

        e = cfg.export
        report["export"] = export_run(run.path, int8=e.int8, tolerance=e.tolerance, opset=e.opset,
                                      parity_samples=e.parity_samples, int8_method=e.int8_method)
    fault_point("report")
    atomic_write_json(run.path / "report.json", report)
    write_report_html(report, run.path)
