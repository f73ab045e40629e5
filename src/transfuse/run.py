"""The pipeline as a short script: data -> splits -> candidates -> selection -> report.

One run = one folder: the resolved config, splits, each candidate's CV scores and out-of-fold
probabilities, the chosen model, ``report.json`` and ``report.html``. Finished candidates are
kept on disk, so ``transfuse resume`` (or the same ``transfuse run``) continues where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfuse import __version__
from transfuse.candidates import (
    CandidateResult,
    run_finetune,
    run_linear_probe,
    run_raw_estimator,
    safe_name,
)
from transfuse.config import ExperimentConfig, config_to_yaml, load_config
from transfuse.data.base import Dataset, Quarantined
from transfuse.data.multimodal import dataset_for
from transfuse.errors import UserError
from transfuse.io import atomic_write_json, atomic_write_text, read_json
from transfuse.progress import console

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"


@dataclass
class Prepared:
    """The data of a run: training part, test part, CV folds over the training part."""

    train: Dataset
    test: Dataset
    folds: list[tuple[np.ndarray, np.ndarray]]
    quarantined: list[Quarantined] = field(default_factory=list)


def run_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output.dir or Path("runs") / cfg.name)


def prepare_data(cfg: ExperimentConfig, run_dir: Path) -> Prepared:
    """Load, validate (quarantine) and split the data; the split is saved and reused on resume."""
    from transfuse.data.registry import load_dataset
    from transfuse.data.splits import Splits, make_splits

    d = cfg.data
    opts = dict(d.options)
    # text cleaning: only when the user set it (sources such as spamassassin have own defaults)
    cleaning = cfg.preprocess.text if cfg.preprocess.text.model_fields_set else None
    if d.modality == "text" and cleaning is not None:
        opts.setdefault("cleaning", cleaning)
    data = load_dataset(d.source, d.path, **opts)
    test_data = None
    if d.test_path is not None or d.test_source is not None:
        topts = dict(d.test_options)
        if d.modality == "text" and cleaning is not None:
            topts.setdefault("cleaning", cleaning)
        test_data = load_dataset(d.test_source or d.source, d.test_path, **topts)
    if data.modality != d.modality:
        raise UserError(f"data.source {d.source!r} gives {data.modality} data but data.modality is "
                        f"{d.modality!r}; set data.modality: {data.modality}")
    split_file = run_dir / "splits.json"
    if split_file.exists():
        splits = Splits.load(split_file)
        splits.check_matches(data)
    else:
        splits = make_splits(data, folds=cfg.split.folds, test_size=cfg.split.test_size,
                             seed=cfg.seed, test_dataset=test_data)
        splits.save(split_file)
    for w in splits.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    quarantined = list(data.quarantined) + (list(test_data.quarantined) if test_data else [])
    quarantined += list(splits.quarantined) + list(splits.test_quarantined)
    train = data.subset(splits.train_idx)
    test = (test_data if test_data is not None else data).subset(splits.test_idx)
    # fold indices are absolute in ``data``; the candidates index the training part
    pos = {int(a): i for i, a in enumerate(splits.train_idx)}
    folds = [(np.array([pos[int(a)] for a in tr]), np.array([pos[int(a)] for a in va]))
             for tr, va in splits.folds]
    return Prepared(train=train, test=test, folds=folds, quarantined=quarantined)


def backbone_options(cfg: ExperimentConfig, spec_options: dict[str, Any], modality: str) -> dict[str, Any]:
    opts = dict(spec_options)
    if modality == "image" and cfg.preprocess.image_size:
        opts.setdefault("image_size", cfg.preprocess.image_size)
    return opts


def short_name(spec: str) -> str:
    return spec.removeprefix("bundled:")


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the whole experiment; returns the report dict."""
    from transfuse.backbones.registry import create_backbone
    from transfuse.train.cache import FeatureCache

    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg)
    start_run_folder(cfg, run_dir)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = prepare_data(cfg, run_dir)
    timings["data"] = time.perf_counter() - t
    y = data.train.labels
    n_classes = len(data.train.classes)
    if len(np.unique(y)) < 2:
        raise UserError(f"data {cfg.data.path!r}: fewer than 2 classes with valid inputs; need at least 2")
    cache = FeatureCache()
    results: list[CandidateResult] = []
    skipped: list[dict[str, str]] = []
    for bcfg in cfg.backbones:
        opts = backbone_options(cfg, bcfg.options, cfg.data.modality)
        t = time.perf_counter()
        backbone = create_backbone(bcfg.name, **opts)
        timings[f"load:{short_name(bcfg.name)}"] = time.perf_counter() - t
        raw = getattr(backbone, "is_raw_estimator", False)
        train_b = dataset_for(data.train, backbone.modality)  # a multimodal dataset's own column
        test_b = dataset_for(data.test, backbone.modality)
        feats: tuple[np.ndarray, np.ndarray] | None = None
        for strategy in ([None] if raw else cfg.adapt.strategies):
            name = short_name(bcfg.name) if raw else f"{short_name(bcfg.name)}/{strategy}"
            if strategy in ("finetune", "lp_ft") and not getattr(backbone, "trainable", True):
                reason = f"{bcfg.name} cannot be fine-tuned (frozen backbone); only linear_probe applies"
                console.print(f"[yellow]skip[/yellow] {name}: {reason}")
                skipped.append({"name": name, "reason": reason})
                continue
            folder = run_dir / "candidates" / safe_name(name)
            done = CandidateResult.load(folder)
            if done is not None:
                console.print(f"[dim]resume: {name} already done (cv {done.cv_mean:.4f})[/dim]")
                results.append(done)
                continue
            t = time.perf_counter()
            console.print(f"[bold]candidate[/bold] {name}")
            if raw:
                res = run_raw_estimator(name, backbone, train_b, test_b, data.folds, n_classes, cfg)
            else:
                if strategy in ("linear_probe", "lp_ft") and feats is None:
                    te = time.perf_counter()
                    feats = (cache.embed(backbone, train_b, cfg.train.embed_batch_size, progress),
                             cache.embed(backbone, test_b, cfg.train.embed_batch_size, progress))
                    timings[f"embed:{short_name(bcfg.name)}"] = time.perf_counter() - te
                if strategy == "linear_probe":
                    res = run_linear_probe(name, backbone, feats[0], feats[1], y, data.folds,
                                           n_classes, cfg, folder)
                else:
                    res = run_finetune(name, strategy, backbone, train_b, test_b,
                                       feats[0] if feats else None, data.folds, n_classes, cfg,
                                       folder, progress)
                res.inference_ms_per_example = inference_ms(backbone, test_b)
            res.save(folder)
            save_model_spec(folder, res, bcfg.name, opts, train_b, backbone)
            results.append(res)
            timings[f"candidate:{name}"] = time.perf_counter() - t
            console.print(f"  cv {cfg.evaluate.metric} {res.cv_mean:.4f} ± {res.cv_std:.4f}")
    if not results:
        raise UserError("no candidate could run: " + "; ".join(s["reason"] for s in skipped))
    if cfg.fuse.enabled:
        from transfuse.fuse.pipeline import run_fusions

        t = time.perf_counter()
        results += run_fusions(cfg, data, results, run_dir, cache, progress)
        timings["fusion"] = time.perf_counter() - t
    report = build_report(cfg, run_dir, data, results, timings)
    report["skipped"] = skipped
    if cfg.fuse.enabled and (run_dir / "fusion.json").exists():
        report["fusion"] = read_json(run_dir / "fusion.json")  # members left out, with reasons
    temperature = calibrate_chosen(cfg, data, results, report)
    finish_run(run_dir, report, results)
    if temperature is not None:
        save_temperature(run_dir, temperature)
    if cfg.export.enabled:
        export_chosen(cfg, run_dir, report)
    return report


def calibrate_chosen(cfg: ExperimentConfig, data: Prepared, results: list[CandidateResult],
                     report: dict[str, Any]) -> float | None:
    """Temperature scaling of the chosen candidate, fitted on its out-of-fold probabilities:
    adds ``report["calibration"]`` (ECE before/after on OOF and test) and returns T."""
    if not cfg.calibration.enabled:
        return None
    from transfuse.evaluate.calibration import calibrate_candidate

    chosen = next(r for r in results if r.name == report["chosen"])
    t, block = calibrate_candidate(data.train.labels, chosen.oof, data.test.labels, chosen.test,
                                   data.train.classes, cfg.calibration.n_bins)
    report["calibration"] = block
    return t


def save_temperature(run_dir: Path, temperature: float) -> None:
    """Record T in ``model/model.json`` (predict and export apply it) and keep
    ``model/test_proba.npy`` equal to what the calibrated model predicts."""
    import io

    from transfuse.evaluate.calibration import apply_temperature
    from transfuse.io import atomic_write_bytes, read_json

    info = read_json(run_dir / "model" / "model.json") if (run_dir / "model" / "model.json").exists() else None
    if info is None:
        return
    atomic_write_json(run_dir / "model" / "model.json", {**info, "temperature": temperature})
    p = np.load(run_dir / "model" / "test_proba.npy")
    if len(p):
        buf = io.BytesIO()
        np.save(buf, apply_temperature(p, temperature).astype(np.float32))
        atomic_write_bytes(run_dir / "model" / "test_proba.npy", buf.getvalue())


def export_chosen(cfg: ExperimentConfig, run_dir: Path, report: dict[str, Any]) -> None:
    """``export.enabled``: write the ONNX model (and int8) and add ``report["export"]``."""
    from transfuse.evaluate.report_html import write_report_html
    from transfuse.export.onnx import export_run

    e = cfg.export
    report["export"] = export_run(run_dir, int8=e.int8, tolerance=e.tolerance, opset=e.opset,
                                  parity_samples=e.parity_samples, int8_method=e.int8_method)
    atomic_write_json(run_dir / "report.json", report)
    write_report_html(report, run_dir)


def start_run_folder(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Create the run folder, or check that an existing one holds the same experiment."""
    text = config_to_yaml(cfg)
    cfg_file = run_dir / CONFIG_FILE
    if cfg_file.exists():
        old = cfg_file.read_text(encoding="utf-8")
        if old != text:
            raise UserError(
                f"run folder {str(run_dir)!r} holds a different experiment; use "
                f"'transfuse resume {run_dir}' to continue it, or give another output folder (--out)"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_file, text)


def inference_ms(backbone: Any, test: Dataset, n: int = 16) -> float | None:
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


def save_model_spec(folder: Path, res: CandidateResult, spec: str, options: dict[str, Any],
                    train: Dataset, backbone: Any) -> None:
    """``model.json``: what ``transfuse predict`` needs to rebuild this candidate."""
    if getattr(backbone, "is_raw_estimator", False):
        return
    info = {"kind": res.kind, "modality": train.modality, "classes": train.classes,
            "backbone": {"name": spec, "options": options}, "strategy": res.strategy,
            "weights_hash": backbone.weights_hash(), "feature_dim": backbone.feature_dim,
            "files": {"head": "head.safetensors"} if res.strategy == "linear_probe"
            else {"model": "model.safetensors"}}
    if not any((folder / f).exists() for f in info["files"].values()):
        info["files"] = {}  # nothing saved to serve: load_folder says so in one line
    atomic_write_json(folder / "model.json", info)


def build_report(cfg: ExperimentConfig, run_dir: Path, data: Prepared,
                 results: list[CandidateResult], timings: dict[str, float]) -> dict[str, Any]:
    from transfuse.evaluate.metrics import classification_metrics

    classes = data.train.classes
    ytest = data.test.labels
    cands = []
    for r in results:
        c = r.summary()
        c["test"] = classification_metrics(ytest, r.test, classes) if len(ytest) else None
        cands.append(c)
    chosen = max(results, key=lambda r: r.cv_mean)
    chosen_entry = next(c for c in cands if c["name"] == chosen.name)
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
        "test": chosen_entry["test"],
        "quarantined": [q.to_dict() for q in data.quarantined],
        "timings": timings,
        "run_dir": str(run_dir),
    }


def finish_run(run_dir: Path, report: dict[str, Any], results: list[CandidateResult]) -> None:
    """Copy the chosen model into ``model/`` and write the reports (atomically)."""
    from transfuse.evaluate.report_html import write_report_html

    src = run_dir / "candidates" / safe_name(report["chosen"])
    dst = run_dir / "model"
    tmp = run_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in ("model.json", "head.safetensors", "model.safetensors"):
        if (src / f).exists():
            shutil.copy2(src / f, tmp / f)
    chosen = next(r for r in results if r.name == report["chosen"])
    np.save(tmp / "test_proba.npy", chosen.test)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    atomic_write_json(run_dir / "report.json", report)
    write_report_html(report, run_dir)


def resume(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Continue an interrupted run from its saved config; finished candidates are kept."""
    run_dir = Path(run_dir)
    cfg_file = run_dir / CONFIG_FILE
    if not cfg_file.exists():
        raise UserError(f"{str(run_dir)!r} is not a transfuse run folder (no {CONFIG_FILE}); "
                        "give the folder a 'transfuse run' or 'transfuse fit' wrote")
    cfg = load_config(cfg_file)
    return run_experiment(cfg, run_dir, progress=progress)
