"""Fusion inside ``transfuse run``: fusions are candidates, chosen by CV, served by ``predict``.

Real data (sklearn digits as PNGs) and the real bundled EfficientNet-Lite0/Lite1 at 32 px."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import predict_test_split, write_digits_folder

pytestmark = pytest.mark.real

METHODS = ("mean", "weighted", "greedy", "stacking")


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuse")
    data = write_digits_folder(root / "digits", classes=(1, 7, 9), per_class=12)
    cfg = {
        "name": "fuse", "seed": 0,
        "data": {"source": "folder", "path": str(data), "modality": "image"},
        "split": {"folds": 3, "test_size": 0.25},
        "preprocess": {"image_size": 32},
        "backbones": ["bundled:efficientnet_lite0", "bundled:efficientnet_lite1"], "adapt": {"baseline": False},
        "fuse": {"distill": {"enabled": True, "weight_decay": [1e-3, 1.0]}},
        "output": {"dir": str(root / "run")},
    }
    from transfuse.config import validate_config
    from transfuse.pipeline import run_experiment

    run_experiment(validate_config(cfg), progress=False)
    return root / "run"


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def test_fusions_are_candidates_chosen_by_cv(fused_run: Path):
    rep = _report(fused_run)
    cands = {c["name"]: c for c in rep["candidates"]}
    singles = ["efficientnet_lite0/linear_probe", "efficientnet_lite1/linear_probe"]
    for m in METHODS:
        c = cands[f"fusion/{m}"]
        assert c["kind"] == "fusion" and c["method"] == m and sorted(c["members"]) == sorted(singles)
        assert len(c["cv_scores"]) == 3 and c["cv_mean"] == pytest.approx(np.mean(c["cv_scores"]))
        assert c["cv_std"] == pytest.approx(np.std(c["cv_scores"]))
        assert 0.0 <= c["test"]["accuracy"] <= 1.0 and "macro_f1" in c["test"]
    feat = cands["fusion/features"]
    assert feat["kind"] == "fusion" and feat["members"] == ["efficientnet_lite0", "efficientnet_lite1"]
    assert cands["fusion/mean"]["inference_ms_per_example"] == pytest.approx(
        sum(cands[s]["inference_ms_per_example"] for s in singles))
    best = max(rep["candidates"], key=lambda c: c["cv_mean"])
    assert rep["chosen"] == best["name"]
    assert json.loads((fused_run / "fusion.json").read_text())["members"]


def test_mean_fusion_equals_average_of_members(fused_run: Path):
    """The mean fusion's test probabilities are the members' average (recomputed from their files)."""
    def proba(name: str) -> dict:
        with np.load(fused_run / "candidates" / name.replace("/", "_") / "proba.npz") as z:
            return {"oof": z["oof"], "test": z["test"]}

    a, b = proba("efficientnet_lite0/linear_probe"), proba("efficientnet_lite1/linear_probe")
    m = proba("fusion/mean")
    assert np.abs(m["test"] - (a["test"] + b["test"]) / 2).max() < 1e-6
    assert np.abs(m["oof"] - (a["oof"] + b["oof"]) / 2).max() < 1e-6  # mean has nothing to fit


def test_feature_fusion_reproduces_its_test_probabilities(fused_run: Path):
    """The saved feature fusion, rebuilt by artifacts.serve, predicts the test rows as during the
    run (the stacking ensemble is checked through 'transfuse predict' below)."""
    name = "fusion/features"
    from transfuse.artifacts.serve import load_model
    from transfuse.data.registry import load_dataset

    folder = fused_run / "candidates" / name.replace("/", "_")
    model, spec = load_model(folder)
    assert spec.kind == "features" and [b.block for b in spec.backbones] == ["efficientnet_lite0",
                                                                          "efficientnet_lite1"]
    cfg = yaml.safe_load((fused_run / "config.yaml").read_text())
    splits = json.loads((fused_run / "splits.json").read_text())
    test = load_dataset("folder", cfg["data"]["path"]).subset(splits["test_idx"])
    with np.load(folder / "proba.npz") as z:
        ref = z["test"]
    got = model.predict_proba(test, batch_size=8)
    assert got.shape == ref.shape == (9, 3)
    assert np.abs(got - ref).max() < 1e-4


def test_predict_serves_a_promoted_fusion(fused_run: Path, tmp_path: Path):
    """``transfuse predict`` on a run whose model is a stacking fusion (promoted by
    ``RunFolder.promote``, as the run promotes its chosen candidate, with a calibration
    temperature) reproduces the fusion's calibrated test probabilities."""
    import shutil

    from transfuse.artifacts.spec import load_spec
    from transfuse.artifacts.store import RunFolder
    from transfuse.evaluate.calibration import apply_temperature

    run = tmp_path / "run"
    shutil.copytree(fused_run, run)
    with np.load(run / "candidates" / "fusion_stacking" / "proba.npz") as z:
        ref = apply_temperature(z["test"], 1.7)
    RunFolder(run).promote("fusion/stacking", ref, 1.7)
    spec = load_spec(run / "model")
    assert spec.kind == "ensemble" and spec.method == "stacking" and spec.temperature == 1.7
    assert np.array_equal(np.load(run / "model" / "test_proba.npy"), ref.astype(np.float32))
    got = predict_test_split(run)
    assert got.shape == ref.shape == (9, 3)
    assert np.abs(got - ref).max() < 1e-5


def test_distilled_student_is_a_candidate(fused_run: Path):
    rep = _report(fused_run)
    d = next(c for c in rep["candidates"] if c["kind"] == "distilled")
    teacher = max((c for c in rep["candidates"] if c["kind"] == "fusion"), key=lambda c: c["cv_mean"])
    assert d["members"] == [teacher["name"]] and d["strategy"] == "distill"  # the best fusion by CV
    best = max((c for c in rep["candidates"] if c["kind"] == "single"), key=lambda c: c["cv_mean"])
    assert d["backbone"] == best["backbone"]  # the student is the best single candidate's backbone
    single = next(c for c in rep["candidates"] if c["backbone"] == d["backbone"] and c["kind"] == "single")
    assert d["inference_ms_per_example"] == single["inference_ms_per_example"]
    assert d["params"] == single["params"]
    # the weight-decay list is a grid chosen by inner folds inside each outer fold (nested CV): each
    # fold's choice is in the grid, and the shipped setting has the best inner-CV score over all
    # training rows. The student's CV scores the whole procedure, so it need not be the grid's max.
    from transfuse.artifacts.spec import load_spec

    spec = load_spec(next((fused_run / "candidates").glob("distill*")))
    assert spec.kind == "probe" and spec.strategy == "distill" and spec.extra["teacher"] == teacher["name"]
    settings = spec.extra["distill"]
    grid = {(2.0, 0.3, 0.001), (2.0, 0.3, 1.0)}
    inner = settings["inner_cv"]
    assert sorted(inner) == ["T=2.0,alpha=0.3,wd=0.001", "T=2.0,alpha=0.3,wd=1.0"]
    assert all(0.0 <= v <= 1.0 for v in inner.values())
    assert inner[f"T=2.0,alpha=0.3,wd={settings['weight_decay']}"] == pytest.approx(max(inner.values()))
    sel = d["selected"]
    assert len(sel["folds"]) == 3
    assert all((f["temperature"], f["alpha"], f["weight_decay"]) in grid for f in sel["folds"])
    assert sel["final"] == {k: settings[k] for k in ("temperature", "alpha", "weight_decay")}
    assert len(d["cv_scores"]) == 3 and d["cv_mean"] == pytest.approx(np.mean(d["cv_scores"]))


def test_baseline_is_fused_and_nan_member_is_reported():
    """Member selection: a raw baseline (TF-IDF) is fused like any member (it is servable); a NaN
    member is left out with the reason; members come best CV first; ``max_members`` names those
    it leaves out."""
    from transfuse.adapt.result import CandidateResult
    from transfuse.config import FuseConfig
    from transfuse.fuse.candidates import select_members

    rng = np.random.default_rng(0)

    def cand(name: str, cv: float, kind: str = "single", nan: bool = False) -> CandidateResult:
        p = rng.dirichlet(np.ones(3), size=20).astype(np.float32)
        if nan:
            p[3] = np.nan
        return CandidateResult(name, kind, p, p[:5], [cv])

    res = [cand("a", 0.5), cand("b", 0.7), cand("bad", 0.9, nan=True), cand("tfidf", 0.6, kind="baseline"),
           cand("fusion/mean", 0.95, kind="fusion")]
    members, excluded = select_members(FuseConfig(), res)
    assert [m.name for m in members] == ["b", "tfidf", "a"]
    assert excluded == {"bad": "1 rows hold NaN/inf probabilities"}
    members, excluded = select_members(FuseConfig(max_members=2), res)
    assert [m.name for m in members] == ["b", "tfidf"]
    assert "max_members=2" in excluded["a"] and "NaN" in excluded["bad"]
    # a backbone's linear probe is nested in its multi-layer probe (the view's last columns): one
    # member of the two, unless the multi-layer probe is broken; another backbone's stays
    res = [cand("x/linear_probe", 0.9), cand("x/multilayer_probe", 0.8), cand("y/linear_probe", 0.7),
           cand("x/lp_ft", 0.6)]
    members, excluded = select_members(FuseConfig(), res)
    assert [m.name for m in members] == ["x/multilayer_probe", "y/linear_probe", "x/lp_ft"]
    assert excluded == {"x/linear_probe": "its features are the last columns of x/multilayer_probe's, a member"}
    res[1] = cand("x/multilayer_probe", 0.8, nan=True)
    members, excluded = select_members(FuseConfig(), res)
    assert [m.name for m in members] == ["x/linear_probe", "y/linear_probe", "x/lp_ft"]
    assert list(excluded) == ["x/multilayer_probe"]


def test_joint_fusion_is_saved_served_and_refused_by_export(tmp_path: Path):
    """fusion/joint writes a model.json: the candidate folder rebuilds the jointly fine-tuned net
    and reproduces the run's test probabilities; ONNX export refuses it with a one-line reason."""
    from transfuse.artifacts.serve import load_model
    from transfuse.config import validate_config
    from transfuse.errors import UserError
    from transfuse.export.onnx import export_run, run_datasets
    from transfuse.pipeline import run_experiment

    data = write_digits_folder(tmp_path / "digits", classes=(1, 7), per_class=8)
    run = tmp_path / "run"
    run_experiment(validate_config({
        "name": "joint", "seed": 0, "data": {"source": "folder", "path": str(data), "modality": "image"},
        "split": {"folds": 2, "test_size": 0.25}, "preprocess": {"image_size": 32},
        "backbones": ["bundled:efficientnet_lite0", "bundled:efficientnet_lite1"], "adapt": {"baseline": False},
        "fuse": {"ensembles": [], "features": {"enabled": False},
                 "joint": {"enabled": True, "epochs": 1, "batch_size": 8}},
        "output": {"dir": str(run)}}), progress=False)
    folder = run / "candidates" / "fusion_joint"
    info = json.loads((folder / "model.json").read_text())
    assert info["kind"] == "joint" and info["method"] == "joint"
    assert [b["name"] for b in info["backbones"]] == ["bundled:efficientnet_lite0", "bundled:efficientnet_lite1"]
    model, _ = load_model(folder)
    _, test = run_datasets(run)
    with np.load(folder / "proba.npz") as z:
        saved = z["test"]
    got = model.predict_proba(test, batch_size=8)
    assert got.shape == saved.shape == (len(test), 2)
    assert np.abs(got - saved).max() < 1e-5
    with pytest.raises(UserError, match=r"a jointly fine-tuned fusion \(fusion/joint\) cannot be exported to ONNX"):
        export_run(run, candidate="fusion/joint")


def test_finetuned_student_is_saved_and_served(tmp_path: Path):
    """fuse.distill.mode: finetune fine-tunes the student from its distilled head inside each fold
    and on all rows; the whole student is saved and rebuilt to the run's own test probabilities."""
    from transfuse.artifacts.serve import load_model
    from transfuse.config import validate_config
    from transfuse.export.onnx import run_datasets
    from transfuse.pipeline import run_experiment

    data = write_digits_folder(tmp_path / "digits", classes=(1, 7), per_class=8)
    run = tmp_path / "run"
    rep = run_experiment(validate_config({
        "name": "ftstudent", "seed": 0, "data": {"source": "folder", "path": str(data), "modality": "image"},
        "split": {"folds": 2, "test_size": 0.25}, "preprocess": {"image_size": 32},
        "backbones": ["bundled:efficientnet_lite0", "bundled:efficientnet_lite1"], "adapt": {"baseline": False},
        "fuse": {"ensembles": ["mean"], "features": {"enabled": False},
                 "distill": {"enabled": True, "mode": "finetune", "epochs": 1, "batch_size": 4, "lr": 1e-3}},
        "output": {"dir": str(run)}}), progress=False)
    d = next(c for c in rep["candidates"] if c["kind"] == "distilled")
    assert d["members"] == ["fusion/mean"] and len(d["cv_scores"]) == 2
    folder = next((run / "candidates").glob("distill*"))
    info = json.loads((folder / "model.json").read_text())
    assert info["files"] == {"model": "model.safetensors"} and info["extra"]["distill"]["mode"] == "finetune"
    assert info["kind"] == "finetune" and info["strategy"] == "distill"
    model, _ = load_model(folder)
    _, test = run_datasets(run)
    with np.load(folder / "proba.npz") as z:
        saved = z["test"]
    assert np.abs(model.predict_proba(test, batch_size=4) - saved).max() < 1e-5
    # the backbone itself was trained: its weights moved away from the pretrained ones
    from transfuse.backbones.registry import create_backbone

    ref = info["backbones"][0]
    pretrained = create_backbone(ref["name"], **ref["options"]).state_dict()
    tuned = model.backbone.state_dict()
    moved = [k for k, v in pretrained.items() if v.is_floating_point() and not torch.equal(v, tuned[k])]
    assert len(moved) > 10
