"""ONNX export of every served kind as one graph: prediction-level ensembles (mean, weighted,
stacking), a feature fusion and a distilled student, each parity-checked against the torch
serving path on the run's real test inputs; int8 chooses its method by model family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_digits_folder

from transfuse.config import validate_config

pytestmark = pytest.mark.real

@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory) -> Path:
    from transfuse.pipeline import run_experiment

    root = tmp_path_factory.mktemp("fus")
    data = write_digits_folder(root / "digits", per_class=12)
    cfg = {"name": "fus", "data": {"source": "folder", "path": str(data)},
           "split": {"folds": 3, "test_size": 0.25}, "preprocess": {"image_size": 32},
           "backbones": ["bundled:efficientnet_lite0", "bundled:efficientnet_lite1"], "adapt": {"baseline": False},
           "fuse": {"ensembles": ["mean", "weighted", "stacking"], "features": {"enabled": True},
                    "distill": {"enabled": True, "student": "bundled:efficientnet_lite0"}},
           "output": {"dir": str(root / "run")}}
    run_experiment(validate_config(cfg), root / "run", progress=False)
    return root / "run"


def test_ensemble_graphs_match_the_serving_path(fusion_run):
    """mean / weighted / stacking as torch graphs (what gets traced) vs EnsembleModel, all test rows."""
    from transfuse.artifacts.serve import load_model, predict_proba
    from transfuse.export.onnx import build_graph, collate_parts, run_datasets

    _, test = run_datasets(fusion_run)
    for name in ("fusion_mean", "fusion_weighted", "fusion_stacking"):
        folder = fusion_run / "candidates" / name
        model, spec = load_model(folder)
        graph, parts = build_graph(model, spec, folder)
        with torch.no_grad():
            p_graph = graph(*collate_parts(parts, test, range(len(test)))).numpy()
        assert np.abs(p_graph - predict_proba(model, spec, test)).max() <= 1e-5, name
        assert [p.names for p in parts] == [["m0.input"], ["m1.input"]]


@pytest.mark.parametrize(("name", "kind"), [("fusion/stacking", "ensemble"), ("fusion/features", "features")])
def test_fusions_export_as_one_graph_with_parity(fusion_run, name, kind):
    from transfuse.artifacts.serve import load_model, predict_proba
    from transfuse.export.onnx import batched_proba, export_run, parts_from_meta, run_datasets, session

    meta = export_run(fusion_run, candidate=name)
    assert meta["kind"] == kind
    assert meta["parity_max_abs_diff"] <= 1e-4
    assert meta["inputs"] == ["m0.input", "m1.input"]  # one image input per backbone
    # the whole test split, preprocessing rebuilt from onnx.json alone (as predict does)
    folder = fusion_run / "candidates" / name.replace("/", "_")
    model, spec = load_model(folder)
    _, test = run_datasets(fusion_run)
    parts = parts_from_meta(json.loads((folder / "onnx.json").read_text()))
    p_onnx = batched_proba(session(folder / "model.onnx"), parts, test, batch_size=5)
    assert p_onnx.shape == (len(test), 3)
    assert np.abs(p_onnx - predict_proba(model, spec, test)).max() <= 1e-4
    np.testing.assert_allclose(p_onnx.sum(1), 1.0, atol=1e-5)


def test_distilled_student_exports_and_int8_is_static_for_a_conv_net(fusion_run):
    from transfuse.artifacts.spec import load_spec
    from transfuse.export.onnx import export_run

    name = next(p.name for p in (fusion_run / "candidates").iterdir() if p.name.startswith("distill"))
    meta = export_run(fusion_run, candidate=name.replace("distill_", "distill/"), int8=True)
    spec = load_spec(fusion_run / "candidates" / name)  # a probe-mode student: a head on one backbone
    assert spec.kind == "probe" and spec.strategy == "distill"
    assert meta["kind"] == "probe" and meta["inputs"] == ["input"]
    assert meta["parity_max_abs_diff"] <= 1e-4
    q = meta["int8"]
    assert q["method"] == "static" and q["calibration_samples"] == 27  # all 27 training images
    assert q["shipped"] == (q["check_accuracy_drop"] <= 0.01)
    if q["shipped"]:
        assert q["accuracy_drop"] == pytest.approx(meta["test_accuracy"]["fp32"] - meta["test_accuracy"]["int8"])
