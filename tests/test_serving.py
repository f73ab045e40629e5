"""Every kind of saved candidate is served: ``transfuse predict RUN FILES --candidate NAME``
reproduces the test probabilities the run saved for that candidate (``candidates/NAME/proba.npz``),
and ``transfuse predict RUN FILES`` those of the chosen model (``model/test_proba.npy``, calibrated).

The candidates checked are the ones the runs produce, and every model kind the code knows
(:data:`transfuse.artifacts.spec.Kind`) must appear among them: a new kind fails here until a run
below produces and serves it. Two small real runs: digits PNGs through EfficientNet-Lite0/Lite1 at
32 px (probes, fine-tuning, LP-FT, every ensemble, the feature fusion, a distilled student, the joint
fusion), and WordNet glosses through TF-IDF and MiniLM-L3 (TF-IDF alone and inside every ensemble).
"""

from __future__ import annotations

import json
import os
import shutil
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, write_digits_folder

from transfuse.artifacts.spec import Kind, load_spec

pytestmark = pytest.mark.real

TOL = 1e-5
ENSEMBLES = ("mean", "weighted", "greedy", "stacking")
STRATEGIES = ("linear_probe", "finetune", "lp_ft")
# two CLI processes at a time, one thread each: the start-up (imports) is most of a call's time
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(cfg: dict) -> Path:
    from transfuse.config import validate_config
    from transfuse.pipeline import run_experiment

    run_experiment(validate_config(cfg), progress=False)
    return Path(cfg["output"]["dir"])


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_img")
    data = write_digits_folder(root / "digits", classes=(1, 7, 9), per_class=10)
    return _run({
        "name": "serve_img", "seed": 0,
        "data": {"source": "folder", "path": str(data), "modality": "image"},
        "split": {"folds": 2, "test_size": 0.25}, "preprocess": {"image_size": 32},
        "backbones": ["bundled:efficientnet_lite0", "bundled:efficientnet_lite1"],
        "adapt": {"strategies": list(STRATEGIES)},
        "train": {"finetune": {"epochs": 1, "max_train_batches": 2, "batch_size": 8, "lr": 1e-3,
                               "num_workers": 0}},
        "fuse": {"distill": {"enabled": True},
                 "joint": {"enabled": True, "epochs": 1, "max_train_batches": 2, "batch_size": 8}},
        "output": {"dir": str(root / "run")}})


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_txt")
    return _run({
        "name": "serve_txt", "seed": 0,
        "data": {"source": "wordnet", "modality": "text",
                 "options": {"supersenses": ["animal", "food", "artifact"], "max_per_class": 10}},
        "split": {"folds": 2, "test_size": 0.25},
        "backbones": ["tfidf", "bundled:minilm_l3"],
        "output": {"dir": str(root / "run")}})


def _test_inputs(run: Path, tmp: Path) -> tuple[list[str], list[str]]:
    """The run's test inputs as files for ``transfuse predict`` (images: the PNGs themselves;
    texts: one file each), and the class order."""
    from transfuse.artifacts.store import RunFolder
    from transfuse.config import load_config

    cfg = load_config(run / "config.yaml")
    test = RunFolder(run).prepare_data(cfg).test
    if cfg.data.modality == "image":
        return [str(p) for p in test.items], list(test.classes)
    tmp.mkdir(parents=True, exist_ok=True)
    files = []
    for i, text in enumerate(test.items):
        (tmp / f"{i}.txt").write_text(text, encoding="utf-8")
        files.append(str(tmp / f"{i}.txt"))
    return files, list(test.classes)


def _predict(run: Path, files: list[str], classes: list[str], *extra: str) -> np.ndarray:
    p = cli("predict", str(run), *files, "--json", *extra, env=CLI_ENV)
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["input"] for r in rows] == files
    return np.array([[r["proba"][c] for c in classes] for r in rows])


def _candidates(run: Path) -> dict[str, Path]:
    """Every finished candidate of the run: its name (as the report gives it) and folder."""
    return {json.loads((f / "result.json").read_text())["name"]: f
            for f in sorted((run / "candidates").iterdir()) if (f / "result.json").is_file()}


def _serve_all(run: Path, tmp: Path) -> dict[str, str]:
    """``{candidate: spec kind}``, after checking that predict reproduces each one."""
    files, classes = _test_inputs(run, tmp)
    cands = _candidates(run)

    def check(name: str) -> str | None:
        with np.load(cands[name] / "proba.npz") as z:
            ref = z["test"]
        got = _predict(run, files, classes, "--candidate", name)
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else np.inf
        return None if diff <= TOL else f"{name}: shape {got.shape} vs {ref.shape}, max |diff| {diff:.2e}"

    with ThreadPoolExecutor(2) as pool:
        problems = [p for p in pool.map(check, cands) if p is not None]
    assert not problems, "predict --candidate does not reproduce the run's test probabilities:\n" + \
        "\n".join(problems)
    return {name: load_spec(folder).kind for name, folder in cands.items()}


@pytest.fixture(scope="module")
def served(image_run: Path, text_run: Path, tmp_path_factory) -> dict[str, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("inputs")
    return {"image": _serve_all(image_run, tmp / "image"), "text": _serve_all(text_run, tmp / "text")}


def test_every_candidate_is_served_by_predict(served: dict[str, dict[str, str]]):
    """The candidates the runs were asked for all exist and were checked (in ``served``)."""
    img, txt = served["image"], served["text"]
    singles = {f"{b}/{s}" for b in ("efficientnet_lite0", "efficientnet_lite1") for s in STRATEGIES}
    fusions = {f"fusion/{m}" for m in (*ENSEMBLES, "features", "joint")}
    assert singles | fusions <= set(img)
    assert [n for n in img if n.startswith("distill/")] == ["distill/efficientnet_lite0"] or \
        [n for n in img if n.startswith("distill/")] == ["distill/efficientnet_lite1"]
    assert {"tfidf", "minilm_l3/linear_probe"} | {f"fusion/{m}" for m in ENSEMBLES} <= set(txt)
    assert txt["tfidf"] == "raw"


def test_every_model_kind_is_served(served: dict[str, dict[str, str]], text_run: Path):
    """Each kind of :data:`Kind` is served by at least one candidate above; and an ensemble whose
    members include the raw TF-IDF baseline is among them."""
    kinds = set(served["image"].values()) | set(served["text"].values())
    missing = set(typing.get_args(Kind)) - kinds
    assert not missing, f"model kind(s) {sorted(missing)} have no candidate checked by this test; add one"
    for m in ENSEMBLES:
        spec = load_spec(text_run / "candidates" / f"fusion_{m}")
        assert spec.kind == "ensemble" and "tfidf" in spec.members and "minilm_l3/linear_probe" in spec.members


def test_chosen_model_is_served_by_predict(image_run: Path, text_run: Path, tmp_path: Path):
    """``transfuse predict RUN`` (no --candidate) gives ``model/test_proba.npy``: the chosen
    candidate with its calibration temperature; on the image run the CV winner is a fusion."""
    for run in (image_run, text_run):
        files, classes = _test_inputs(run, tmp_path / run.name)
        ref = np.load(run / "model" / "test_proba.npy")
        got = _predict(run, files, classes)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= TOL, run
        spec = load_spec(run / "model")
        assert spec.temperature is not None  # calibration is on by default
    rep = json.loads((image_run / "report.json").read_text())
    kinds = {c["name"]: c["kind"] for c in rep["candidates"]}
    assert kinds[rep["chosen"]] == "fusion", f"the image run chose {rep['chosen']}, not a fusion"
    assert load_spec(image_run / "model").candidate == rep["chosen"]


def test_export_refuses_a_tfidf_ensemble_and_exports_the_feature_fusion(image_run: Path, text_run: Path,
                                                                        tmp_path: Path):
    p = cli("export", str(text_run), "--candidate", "fusion/stacking", check=False)
    assert p.returncode == 2, p.stderr
    assert "is a raw-input estimator (TF-IDF), which ONNX cannot hold" in p.stderr
    assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") == 0
    assert not (text_run / "candidates" / "fusion_stacking" / "model.onnx").exists()
    run = tmp_path / "run"  # a copy: the export changes what predict --candidate uses (onnx)
    shutil.copytree(image_run, run)
    p = cli("export", str(run), "--candidate", "fusion/features")
    assert "parity max |p_onnx - p_torch|" in p.stdout
    meta = json.loads((run / "candidates" / "fusion_features" / "onnx.json").read_text())
    assert meta["kind"] == "features" and meta["inputs"] == ["m0.input", "m1.input"]
    assert meta["parity_max_abs_diff"] <= 1e-4
