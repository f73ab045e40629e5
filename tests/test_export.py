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
           "preprocess": {"image_size": 32}, "backbones": ["bundled:efficientnet_lite0"], "adapt": {"baseline": False},
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
    # int8: a conv net gets calibrated QDQ; each calibration was tried on training rows (27 here,
    # all of them also calibrate), the one flipping the fewest fp32 decisions kept
    q = meta["int8"]
    assert q["method"] == "static" and meta["kind"] == "probe"
    assert [t["calibration"] for t in q["tried"]] == ["MinMax", "Percentile", "Entropy"]
    assert q["check_rows"] == q["calibration_samples"] == 27
    best = min(q["tried"], key=lambda t: t["flipped"])  # first of equals, as the export keeps it
    assert q["calibration"] == best["calibration"] and q["check_accuracy_drop"] == best["accuracy_drop"]
    assert q["shipped"] == (best["accuracy_drop"] <= 0.01)
    if q["shipped"]:  # test accuracy re-measured, both engines side by side
        assert set(meta["test_accuracy"]) == {"fp32", "int8"}
        assert q["size_bytes"] < 0.5 * meta["size_bytes"]
        assert q["accuracy_drop"] == pytest.approx(meta["test_accuracy"]["fp32"] - meta["test_accuracy"]["int8"])
    else:
        assert set(meta["test_accuracy"]) == {"fp32"} and not (run / "model" / "model.int8.onnx").exists()


@pytest.mark.parametrize("logits", [True, False])
def test_the_folded_temperature_clips_log_probabilities_as_the_torch_path_does(logits: bool) -> None:
    """The graph's calibration is the torch path's (``apply_temperature`` on clipped
    log-probabilities, as T was fitted): a confident model with a class far below 1e-15 and a
    large T (a fusion's 5.9 here) gave 7e-3 apart when the graph divided the raw logits."""
    import torch

    from transfuse.evaluate.calibration import apply_temperature
    from transfuse.export.onnx import _modules

    z = torch.tensor([[40.0, 0.0, -8.0], [3.0, 2.5, -1.0], [0.0, 60.0, 1.0]])
    p = torch.softmax(z, dim=-1)
    graph = _modules()["Graph"](lambda batches: z if logits else p, [], 5.87, logits)
    want = apply_temperature(p.numpy(), 5.87)
    assert np.abs(graph().numpy() - want).max() < 1e-6
    assert np.abs(torch.softmax(z / 5.87, dim=-1).numpy() - want).max() > 1e-3  # what the logits alone give


def test_predict_engines_agree_and_onnx_is_the_default(image_run):
    from transfuse.export.predict import predict

    run, files = image_run
    auto = predict(run, files)
    torch_ = predict(run, files, engine="torch")
    assert auto["engine"] == "onnx" and torch_["engine"] == "torch"
    assert np.abs(auto["proba"] - torch_["proba"]).max() < 1e-4
    # the calibrated test probabilities the run saved
    assert np.abs(auto["proba"] - np.load(run / "model" / "test_proba.npy")).max() < 1e-4
    # the int8 model the export shipped (or its one-line refusal)
    meta = json.loads((run / "model" / "onnx.json").read_text())
    if meta["int8"]["shipped"]:
        int8 = predict(run, files, engine="onnx-int8")
        assert int8["engine"] == "onnx-int8" and int8["proba"].shape == auto["proba"].shape
        assert 0 < np.abs(int8["proba"] - auto["proba"]).max() < 0.2  # another model, close to fp32
        labels = np.array([Path(f).parent.name for f in files])
        acc = float((np.asarray(int8["classes"])[int8["proba"].argmax(1)] == labels).mean())
        assert abs(acc - meta["test_accuracy"]["int8"]) <= 1 / len(files) + 1e-9
    else:
        with pytest.raises(UserError, match="no int8 model"):
            predict(run, files, engine="onnx-int8")
    with pytest.raises(UserError, match=r"--engine 'int8' is not valid; use one of: auto, onnx, onnx-int8, torch"):
        predict(run, files, engine="int8")


def test_onnx_file_carries_classes_and_preprocessing_and_predict_needs_no_torch(image_run):
    """The ONNX files (fp32 and int8) hold the class names, the preprocessing recipe and the
    temperature in ``metadata_props``; ``predict --engine onnx`` runs from them without importing
    torch, and answers what the torch engine answers."""
    import subprocess
    import sys

    import onnxruntime as ort

    from transfuse.export.predict import predict

    run, files = image_run
    shipped = json.loads((run / "model" / "onnx.json").read_text())["int8"]["shipped"]
    for f in ("model.onnx", "model.int8.onnx") if shipped else ("model.onnx",):  # int8 may not ship (see above)
        props = ort.InferenceSession(str(run / "model" / f)).get_modelmeta().custom_metadata_map
        assert json.loads(props["transfuse.classes"]) == ["digit0", "digit1", "digit7"]
        pre = json.loads(props["transfuse.preprocessing"])
        assert pre[0]["type"] == "image" and pre[0]["input_size"] == [3, 32, 32] and pre[0]["inputs"] == ["input"]
        assert float(props["transfuse.temperature"]) == pytest.approx(json.loads(
            (run / "model" / "model.json").read_text())["temperature"])
    code = ("import json, sys\nfrom transfuse.export.predict import predict\n"
            f"r = predict({str(run)!r}, {files!r}, engine='onnx')\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'proba': r['proba'].tolist()}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(p.stdout)
    assert out["torch"] is False
    # as the engines agree everywhere (export parity tolerance 1e-4; ONNX vs torch kernels)
    assert np.abs(np.array(out["proba"]) - predict(run, files, engine="torch")["proba"]).max() < 1e-4


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


def test_export_out_copies_the_model_into_a_safe_folder(image_run, tmp_path):
    """``transfuse export RUN --out OUT``: ``OUT/model/`` predicts as the run does; a second export
    needs --overwrite; a folder of the user's or one inside the run is refused."""
    from transfuse.export.onnx import copy_export
    from transfuse.export.predict import predict

    run, files = image_run
    out = copy_export(run / "model", tmp_path / "ship", run)
    shipped = json.loads((run / "model" / "onnx.json").read_text())["int8"]["shipped"]  # may not ship (see above)
    assert {"model.onnx", "onnx.json", "model.json", *(["model.int8.onnx"] if shipped else [])} \
        <= {p.name for p in (out / "model").iterdir()}
    shipped, original = predict(out, files), predict(run, files)
    assert shipped["engine"] == "onnx" and np.array_equal(shipped["proba"], original["proba"])
    with pytest.raises(UserError, match="it holds an earlier 'transfuse export' output: pass --overwrite"):
        copy_export(run / "model", out, run)
    copy_export(run / "model", out, run, overwrite=True)
    (out / "deploy.sh").write_text("the user's")
    with pytest.raises(UserError, match="holds 'deploy.sh', which transfuse export did not write"):
        copy_export(run / "model", out, run, overwrite=True)
    with pytest.raises(UserError, match=f"^--out {run}/ship is inside the input folder {run} of transfuse export"):
        copy_export(run / "model", run / "ship", run)
    with pytest.raises(UserError, match=f"^--out {run.parent} holds the input {run} of transfuse export"):
        copy_export(run / "model", run.parent, run, overwrite=True)
    assert (out / "deploy.sh").is_file() and (run / "model" / "model.json").is_file()


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
    pre = meta["parts"][0].pop("preprocess")  # the tokenizer's settings, for users of the ONNX file
    assert pre["type"] == "text" and pre["max_length"] == 128 and pre["lowercase"] is True
    assert pre["tokenizer_file"].endswith("tokenizer.json") and pre["prefix_ids"] == [101] and pre["suffix_ids"] == [102]
    assert meta["parts"] == [{"backbone": {"name": "bundled:minilm_l6", "options": {}}, "prefix": "",
                              "inputs": ["input_ids", "attention_mask"]}]
    texts = ["a small furry animal that lives in burrows", "a sweet baked food made of flour and sugar"]
    a, b = predict(tmp_path / "run", texts, engine="onnx"), predict(tmp_path / "run", texts, engine="torch")
    assert np.abs(a["proba"] - b["proba"]).max() < 1e-4
    # the ONNX engine tokenises with the tokenizers library alone: no torch
    import subprocess
    import sys

    code = ("import sys\nfrom transfuse.export.predict import predict\n"
            f"r = predict({str(tmp_path / 'run')!r}, {texts + ['a long text ' * 300]!r}, engine='onnx')\n"
            "print('torch' in sys.modules, r['proba'].shape)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert p.stdout.split() == ["False", "(3,", "2)"], p.stdout + p.stderr
    with pytest.raises(UserError, match="has no ONNX model; run 'transfuse export"):
        (tmp_path / "run" / "model" / "model.onnx").unlink()
        predict(tmp_path / "run", texts, engine="onnx")


def test_predict_answers_the_good_inputs_and_gives_each_bad_one_an_error(image_run, tmp_path):
    """One bad input in a batch is an error record (the reason ``fit`` would quarantine it); the
    others get the same probabilities as a batch of good inputs alone, on both engines."""
    import struct

    from transfuse.export.predict import predict

    run, files = image_run
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "bomb.bmp").write_bytes(b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
                                        + struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 24, 0, 0, 1, 1, 0, 0))
    bad = [str(tmp_path / n) for n in ("zero.png", "notes.png", "bomb.bmp", "missing.png")]
    batch = [files[0], bad[0], files[1], bad[1], bad[2], files[2], bad[3]]
    for engine in ("onnx", "torch"):
        good = predict(run, files[:3], engine=engine)
        res = predict(run, batch, engine=engine)
        assert good["errors"] == {}
        assert res["errors"] == {1: "empty file (0 bytes)", 3: "not an image: the file holds text",
                                 4: "too large to decode safely: Image size (400000000 pixels) exceeds limit of "
                                    "178956970 pixels, could be decompression bomb DOS attack.",
                                 6: "file not found"}
        assert np.abs(res["proba"][[0, 2, 5]] - good["proba"]).max() < 1e-6
        assert np.isnan(res["proba"][[1, 3, 4, 6]]).all()


def test_predict_audio_inputs_are_checked_like_fit_checks_them(tmp_path):
    """Empty, silent and over-long audio get error records (a silent hour is not 'high 1.0000')."""
    import soundfile as sf

    from transfuse.export.predict import load_inputs

    sr = 16000
    t = np.arange(sr) / sr
    sf.write(tmp_path / "ok.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    sf.write(tmp_path / "silent.wav", np.zeros(sr, np.float32), sr)
    sf.write(tmp_path / "long.wav", np.full(40 * 8000, 0.1, np.float32), 8000)
    (tmp_path / "empty.wav").write_bytes(b"")
    names = ["ok.wav", "silent.wav", "empty.wav", "long.wav"]
    data, errors = load_inputs([str(tmp_path / n) for n in names], "audio")
    assert data.items == [str(tmp_path / "ok.wav")]
    assert errors == {1: "all-silent (peak 0.0e+00 <= silence_threshold=0.0001)",
                      2: "zero-length file (0 bytes)", 3: "over-long clip: 40.0 s > max_seconds=30"}


def test_int8_that_loses_accuracy_is_not_shipped(image_run, tmp_path, monkeypatch):
    """With a drop threshold no int8 model can meet, the export ships fp32 only and says why;
    asking for the int8 model then fails with that reason."""
    import shutil

    import transfuse.export.onnx as onnx_export
    import transfuse.export.quantize as quantize
    from transfuse.export.predict import OnnxClassifier

    run, _ = image_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.setattr(onnx_export, "INT8_MAX_DROP", -1.0)
    monkeypatch.setattr(quantize, "CALIBRATIONS", ("MinMax",))  # one variant is enough here
    meta = onnx_export.export_run(copy, int8=True)
    q = meta["int8"]
    assert q["shipped"] is False and q["file"] is None and not (copy / "model" / "model.int8.onnx").exists()
    assert q["reason"] == (f"int8 loses {100 * q['check_accuracy_drop']:.1f} points on 27 training rows held out "
                           "from calibration (more than -100, best of 1 calibration(s)); model.onnx (fp32) ships")
    assert not list((copy / "model").glob(".int8-*"))  # no variant left behind
    with pytest.raises(UserError, match=r"no int8 model \(int8 loses .*\); use the fp32 ONNX model"):
        OnnxClassifier(copy / "model", meta, int8=True)
