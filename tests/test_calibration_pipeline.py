"""Calibration inside the pipeline: temperature fitted on the chosen candidate's out-of-fold
probabilities, ECE before/after in the report, the temperature saved with the model and applied
by predict. Real digits images, the real bundled EfficientNet-Lite0 (32 px)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_digits_folder

from transfuse.adapt.result import CandidateResult
from transfuse.config import validate_config
from transfuse.evaluate.calibration import apply_temperature, fit_temperature, log_proba
from transfuse.evaluate.metrics import classification_metrics

pytestmark = pytest.mark.real


def _cfg(data: Path, out: Path, **extra) -> dict:
    return {"name": out.name, "data": {"source": "folder", "path": str(data)},
            "split": {"folds": 3, "test_size": 0.25}, "preprocess": {"image_size": 32},
            "backbones": ["bundled:efficientnet_lite0"], "output": {"dir": str(out)}, "adapt": {"baseline": False}, **extra}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from transfuse.pipeline import run_experiment

    root = tmp_path_factory.mktemp("cal")
    data = write_digits_folder(root / "digits", classes=(0, 1, 3, 7, 8), per_class=16)
    run_experiment(validate_config(_cfg(data, root / "run")), root / "run", progress=False)
    return root / "run"


def test_temperature_is_fitted_on_the_chosen_candidates_oof(run: Path):
    rep = json.loads((run / "report.json").read_text())
    cal = rep["calibration"]
    cand = CandidateResult.load(run / "candidates" / "efficientnet_lite0_linear_probe")
    y = np.array(json.loads((run / "splits.json").read_text())["train_idx"])  # order only
    from transfuse.artifacts.store import RunFolder
    from transfuse.config import load_config

    data = RunFolder(run).prepare_data(load_config(run / "config.yaml"))
    assert len(y) == len(data.train)
    t = fit_temperature(log_proba(cand.oof), data.train.labels)
    assert cal["temperature"] == pytest.approx(t, rel=1e-9)
    classes = data.train.classes
    oof_after = apply_temperature(cand.oof, t)
    assert cal["oof_ece_before"] == pytest.approx(classification_metrics(data.train.labels, cand.oof, classes)["ece"])
    assert cal["oof_ece_after"] == pytest.approx(classification_metrics(data.train.labels, oof_after, classes)["ece"])
    test_after = apply_temperature(cand.test, t)
    assert cal["ece_after"] == pytest.approx(classification_metrics(data.test.labels, test_after, classes)["ece"])
    # T minimises the OOF log-loss, so it can only improve it over T = 1
    assert (classification_metrics(data.train.labels, oof_after, classes)["log_loss"]
            <= classification_metrics(data.train.labels, cand.oof, classes)["log_loss"] + 1e-12)
    assert cal["reliability_before"]["count"] and cal["reliability_after"]["count"]


def test_model_carries_the_temperature_and_predict_applies_it(run: Path):
    from transfuse.data.registry import load_dataset
    from transfuse.export.predict import predict

    rep = json.loads((run / "report.json").read_text())
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["temperature"] == rep["calibration"]["temperature"]
    cand = CandidateResult.load(run / "candidates" / "efficientnet_lite0_linear_probe")
    saved = np.load(run / "model" / "test_proba.npy")
    assert np.abs(saved - apply_temperature(cand.test, info["temperature"])).max() < 1e-6
    cfg = json.loads((run / "report.json").read_text())["config"]
    d = load_dataset("folder", cfg["data"]["path"])
    files = [d.items[i] for i in json.loads((run / "splits.json").read_text())["test_idx"]]
    got = predict(run, files, engine="torch")
    assert got["engine"] == "torch"
    assert np.abs(got["proba"] - saved).max() < 1e-5
    assert "ECE after T=" in (run / "report.html").read_text()


def test_calibration_can_be_turned_off(tmp_path):
    from transfuse.pipeline import run_experiment

    data = write_digits_folder(tmp_path / "digits", per_class=9)
    rep = run_experiment(validate_config(_cfg(data, tmp_path / "run", calibration={"enabled": False})),
                         tmp_path / "run", progress=False)
    assert "calibration" not in rep
    # model.json (a ModelSpec) always states the temperature; null: none is applied
    assert json.loads((tmp_path / "run" / "model" / "model.json").read_text())["temperature"] is None
