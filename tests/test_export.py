"""ONNX export of a run's chosen model: parity with torch on real inputs, the temperature folded
in, int8 quantisation with accuracy re-measured, predict --engine onnx|torch, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_digits_folder

from transfuse.config import validate_config
from transfuse.errors import UserError

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tuple[Path, list[str]]:
    from transfuse.data.registry import load_dataset
    from transfuse.export.onnx import export_cli
    from transfuse.pipeline import run_experiment

    root = tmp_path_factory.mktemp("exp")
    data = write_digits_folder(root / "digits", per_class=12)
    cfg = {"name": "img", "data": {"source": "folder", "path": str(data)}, "split": {"folds": 3, "test_size": 0.25},
           "preprocess": {"image_size": 32}, "backbones": ["bundled:efficientnet_lite0"],
           "output": {"dir": str(root / "run")}}
    run_experiment(validate_config(cfg), root / "run", progress=False)
    export_cli(root / "run", "onnx", int8=True)
    d = load_dataset("folder", str(data))
    files = [d.items[i] for i in json.loads((root / "run" / "splits.json").read_text())["test_idx"]]
    return root / "run", files


def test_onnx_parity_and_temperature(image_run):
    run, files = image_run
    meta = json.loads((run / "model" / "onnx.json").read_text())
    info = json.loads((run / "model" / "model.json").read_text())
    assert meta["parity_max_abs_diff"] <= 1e-4 and meta["parity_samples"] == len(files)
    assert meta["temperature"] == info["temperature"] != 1.0
    assert meta["inputs"] == ["input"]
    # int8: accuracy re-measured on the run's test split, both engines side by side
    assert set(meta["test_accuracy"]) == {"fp32", "int8"}
    assert meta["int8"]["size_bytes"] < 0.5 * meta["size_bytes"]
    assert meta["int8"]["method"] == "static" and meta["kind"] == "probe"  # a conv net: calibrated QDQ
    assert meta["int8"]["accuracy_drop"] == pytest.approx(meta["test_accuracy"]["fp32"] - meta["test_accuracy"]["int8"])


def test_predict_engines_agree_and_onnx_is_the_default(image_run):
    from transfuse.export.predict import predict

    run, files = image_run
    auto = predict(run, files)
    torch_ = predict(run, files, engine="torch")
    assert auto["engine"] == "onnx" and torch_["engine"] == "torch"
    assert np.abs(auto["proba"] - torch_["proba"]).max() < 1e-4
    # the calibrated test probabilities the run saved
    assert np.abs(auto["proba"] - np.load(run / "model" / "test_proba.npy")).max() < 1e-4


def test_export_errors(image_run, tmp_path):
    from transfuse.export.onnx import export_cli, export_run
    from transfuse.export.predict import predict

    run, files = image_run
    with pytest.raises(UserError, match=r"has no chosen model \(model/model.json\); give a finished run"):
        export_cli(tmp_path, "onnx")
    with pytest.raises(UserError, match=r"has no candidate 'fusion/none'; valid: efficientnet_lite0/linear_probe$"):
        export_run(run, candidate="fusion/none")
    with pytest.raises(UserError, match="--format 'tflite' is not supported; valid formats: onnx"):
        export_cli(run, "tflite")
    wav = tmp_path / "seven.wav"
    wav.write_bytes(b"RIFF0000WAVE")
    with pytest.raises(UserError, match=r"is an audio file but this model takes image inputs; give image files"):
        predict(run, [str(wav)])
    with pytest.raises(UserError, match="--engine 'tf' is not valid"):
        predict(run, files, engine="tf")


def test_text_model_exports_with_input_ids_and_attention_mask(tmp_path):
    from transfuse.export.onnx import export_cli
    from transfuse.export.predict import predict
    from transfuse.pipeline import run_experiment

    cfg = {"name": "txt", "data": {"source": "wordnet", "modality": "text",
                                   "options": {"supersenses": ["animal", "food"], "max_per_class": 15}},
           "split": {"folds": 3, "test_size": 0.2}, "backbones": ["bundled:minilm_l6"],
           "output": {"dir": str(tmp_path / "run")}}
    run_experiment(validate_config(cfg), tmp_path / "run", progress=False)
    meta = export_cli(tmp_path / "run", "onnx")
    assert meta["inputs"] == ["input_ids", "attention_mask"] and meta["parity_max_abs_diff"] <= 1e-4
    assert meta["parts"] == [{"backbone": {"name": "bundled:minilm_l6", "options": {}}, "prefix": "",
                              "inputs": ["input_ids", "attention_mask"]}]
    texts = ["a small furry animal that lives in burrows", "a sweet baked food made of flour and sugar"]
    a, b = predict(tmp_path / "run", texts, engine="onnx"), predict(tmp_path / "run", texts, engine="torch")
    assert np.abs(a["proba"] - b["proba"]).max() < 1e-4
    with pytest.raises(UserError, match="has no ONNX model; run 'transfuse export"):
        (tmp_path / "run" / "model" / "model.onnx").unlink()
        predict(tmp_path / "run", texts, engine="onnx")
