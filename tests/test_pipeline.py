"""End to end through the CLI on real images with the real bundled EfficientNet-Lite0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import cli, predict_test_split, write_digits_folder

pytestmark = pytest.mark.real


def experiment(data: Path, out: Path, strategies: list[str], folds: int = 3, epochs: int = 2,
               baseline: bool = False) -> dict:
    return {
        "name": out.name, "seed": 0,
        "data": {"source": "folder", "path": str(data), "modality": "image"},
        "split": {"folds": folds, "test_size": 0.25},
        "preprocess": {"image_size": 32},
        "backbones": ["bundled:efficientnet_lite0"],
        "adapt": {"strategies": strategies, "baseline": baseline},
        "train": {"finetune": {"epochs": epochs, "batch_size": 8, "lr": 1e-3, "patience": 5,
                               "num_workers": 0}},
        "output": {"dir": str(out)},
    }


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    data = write_digits_folder(root / "digits", per_class=12)
    cfg = root / "exp.yaml"
    cfg.write_text(yaml.safe_dump(experiment(data, root / "run", ["linear_probe"], baseline=True)))
    cli("run", str(cfg), "--quiet")
    return root / "run"


def test_report_fields_and_run_folder(probe_run: Path):
    rep = json.loads((probe_run / "report.json").read_text())
    assert {"config.yaml", "splits.json", "report.json", "report.html", "model"} <= {p.name for p in probe_run.iterdir()}
    cand = rep["candidates"][0]
    assert cand["name"] == "efficientnet_lite0/linear_probe"
    assert rep["chosen"] == max(rep["candidates"], key=lambda c: c["cv_mean"])["name"]
    assert len(cand["cv_scores"]) == 3
    assert cand["cv_mean"] == pytest.approx(np.mean(cand["cv_scores"]))
    assert cand["cv_std"] == pytest.approx(np.std(cand["cv_scores"]))
    for key in ("accuracy", "accuracy_ci95", "macro_f1", "log_loss", "ece", "confusion_matrix"):
        assert key in rep["test"]
    # 36 images, 25% test: 9 test images, 27 for CV; confusion matrix counts them all
    assert rep["task"]["n_test"] == 9 and rep["task"]["n_train"] == 27
    assert np.sum(rep["test"]["confusion_matrix"]) == 9
    # out-of-fold probabilities exist for every training item and are rows of a distribution
    with np.load(probe_run / "candidates" / "efficientnet_lite0_linear_probe" / "proba.npz") as z:
        assert z["oof"].shape == (27, 3) and np.allclose(z["oof"].sum(1), 1, atol=1e-5)
    # digits are easy for ImageNet features: far above chance (1/3)
    assert cand["test"]["accuracy"] >= 0.75


def test_the_pixel_baseline_is_a_served_candidate_and_the_report_compares_it(probe_run: Path):
    """``adapt.baseline`` (on by default): raw-pixel logistic regression is a candidate scored by
    the same folds, saved and served like TF-IDF; the report (JSON, HTML, summary) says whether
    transfer beat it. On these digits raw pixels win."""
    from transfuse.export.predict import predict

    rep = json.loads((probe_run / "report.json").read_text())
    cands = {c["name"]: c for c in rep["candidates"]}
    assert cands["pixels"]["kind"] == "baseline" and len(cands["pixels"]["cv_scores"]) == 3
    probe = cands["efficientnet_lite0/linear_probe"]
    v = rep["baseline"]
    assert v["transfer_loses"] == (cands["pixels"]["cv_mean"] > probe["cv_mean"]) is True
    assert v["message"] == (f"transfer loses to the no-transfer baseline: pixels (CV accuracy {cands['pixels']['cv_mean']:.4f}) "
                            f"beats the best transferred candidate efficientnet_lite0/linear_probe (CV "
                            f"{probe['cv_mean']:.4f}); the pretrained features do not fit this data: use the "
                            "baseline, or try fine-tuning or another backbone")
    html = (probe_run / "report.html").read_text()
    assert "Transfer loses to the no-transfer baseline: pixels" in html
    lo, hi = rep["test"]["accuracy_ci95"]
    assert lo <= rep["test"]["accuracy"] <= hi and f"95% CI {lo * 100:.1f}%–{hi * 100:.1f}%" in html
    with np.load(probe_run / "candidates" / "pixels" / "proba.npz") as z:
        splits = json.loads((probe_run / "splits.json").read_text())
        from transfuse.data.registry import load_dataset

        data = load_dataset("folder", str(probe_run.parent / "digits"))
        got = predict(probe_run, [data.items[i] for i in splits["test_idx"]], candidate="pixels")["proba"]
        assert np.abs(got - z["test"]).max() < 1e-6
    wrong = rep["misclassified"]
    assert isinstance(wrong, list) and len(wrong) <= 8
    assert all(set(w) == {"input", "true", "predicted", "confidence"} and w["true"] != w["predicted"] for w in wrong)
    assert "Misclassified test examples" in html


def test_model_card_in_the_hugging_face_layout(probe_run: Path):
    """``model/README.md``: YAML front matter (library, pipeline tag, licence, model-index with
    the test metrics) and the sections a model card has; its numbers are the report's."""
    from transfuse.artifacts.card import weights_licences

    rep = json.loads((probe_run / "report.json").read_text())
    text = (probe_run / "model" / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "transfuse" and front["pipeline_tag"] == "image-classification"
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert metrics[0] == {"type": "accuracy", "name": "test accuracy", "value": round(rep["test"]["accuracy"], 6)}
    for section in ("## Model description", "## Classes", "## Training data", "## Evaluation", "## Intended use",
                    "## Limitations", "## Licences of the bundled weights"):
        assert section in text
    lo, hi = rep["test"]["accuracy_ci95"]
    assert f"95% Wilson interval {lo:.4f}–{hi:.4f}, n = 9" in text
    assert f"Chosen candidate: `{rep['chosen']}`. It has the best cross-validated accuracy of the 2 candidates" in text
    assert rep["baseline"]["message"] in text and f"T = {rep['calibration']['temperature']:.3f}" in text
    # licences come from the installed weight packages' own metadata
    got = {x["backbone"]: x["licence"] for x in weights_licences(["bundled:efficientnet_lite0", "bundled:minilm_l6",
                                                                  "pixels"])}
    assert got == {"bundled:efficientnet_lite0": "Apache Software License 2.0", "bundled:minilm_l6": "MIT",
                   "pixels": "no pretrained weights"}


def test_predict_reproduces_test_probabilities(probe_run: Path):
    got = predict_test_split(probe_run)
    ref = np.load(probe_run / "model" / "test_proba.npy")
    assert got.shape == ref.shape == (9, 3)
    assert np.abs(got - ref).max() < 1e-5


def test_mlp_probe_head_is_served_and_exported(tmp_path: Path):
    """An MLP probe head (train.head.kind: mlp) is saved with its standardiser: predict reproduces
    the run's test probabilities and the ONNX graph matches the torch serving path."""
    from transfuse.export.onnx import export_run

    data = write_digits_folder(tmp_path / "digits", per_class=12)
    exp = experiment(data, tmp_path / "run", ["linear_probe"])
    # regularised: an unregularised 16-unit MLP on 27 images reaches logits of +-34, which turn the
    # small difference between ONNX Runtime's and torch's backbone features into 5e-3 of
    # probability (the head alone exports exactly); export's parity check would rightly refuse it
    exp["train"]["head"] = {"kind": "mlp", "hidden": 16, "max_iter": 100, "weight_decay": 1.0}
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(exp))
    cli("run", str(cfg), "--quiet")
    run = tmp_path / "run"
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["files"] == {"head": "head.safetensors"}
    from safetensors.numpy import load_file

    head = load_file(str(run / "model" / "head.safetensors"))
    assert {"mean", "scale", "net.0.weight", "net.3.weight"} <= set(head) and head["net.0.weight"].shape[0] == 16
    got, ref = predict_test_split(run), np.load(run / "model" / "test_proba.npy")
    assert got.shape == ref.shape == (9, 3)
    assert np.abs(got - ref).max() < 1e-5
    out = export_run(run)
    assert out["parity_max_abs_diff"] < 1e-4 and out["parity_samples"] == 9


def run_beside_plain(tmp_path: Path, probe_run: Path, exp_edit, strategies: list[str], **kw) -> tuple[Path, Path, Path]:
    """Run ``strategies`` (``exp_edit(exp)`` changes the experiment) on ``probe_run``'s data with a
    feature cache of its own; its linear probe must score as in ``probe_run``. Returns the data,
    run and cache folders."""
    data = write_digits_folder(tmp_path / "digits", per_class=12)
    cfg = tmp_path / "exp.yaml"
    exp = experiment(data, tmp_path / "run", strategies, **kw)
    exp_edit(exp)
    cfg.write_text(yaml.safe_dump(exp))
    cache_dir = tmp_path / "features"
    cli("run", str(cfg), "--quiet", env={**os.environ, "TRANSFUSE_FEATURE_CACHE": str(cache_dir)})
    run = tmp_path / "run"
    rep = {c["name"]: c for c in json.loads((run / "report.json").read_text())["candidates"]}
    plain_only = {c["name"]: c for c in json.loads((probe_run / "report.json").read_text())["candidates"]}
    assert rep["efficientnet_lite0/linear_probe"]["cv_scores"] == \
        plain_only["efficientnet_lite0/linear_probe"]["cv_scores"]
    return data, run, cache_dir


def test_rerun_reuses_feature_cache(probe_run: Path, tmp_path: Path):
    """A new run over the same data and backbone embeds nothing again."""
    from transfuse.backbones import create_backbone
    from transfuse.data.registry import load_dataset
    from transfuse.train.cache import FeatureCache

    cfg = yaml.safe_load((probe_run / "config.yaml").read_text())
    data = load_dataset("folder", cfg["data"]["path"])
    cache = FeatureCache()
    bb = create_backbone("bundled:efficientnet_lite0", image_size=32)
    feats = cache.embed(bb, data)
    assert cache.last.n_computed == 0 and cache.last.n_items == 36
    fresh = FeatureCache(tmp_path / "fresh")
    again = fresh.embed(bb, data)
    assert fresh.last.n_computed == 36
    assert np.abs(feats - again).max() < 1e-4


def test_bad_images_are_quarantined_and_run_completes(tmp_path: Path):
    from PIL import Image

    data = write_digits_folder(tmp_path / "data", per_class=8)
    good = next((data / "digit0").glob("*.png"))
    (data / "digit0" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    raw = good.read_bytes()
    (data / "digit1" / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (data / "digit7" / "notes.png").write_text("this is a text file, not an image")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(data / "digit7" / "deep16.png")
    (data / "empty_class").mkdir()
    out = tmp_path / "run"
    cli("fit", "--data", str(data), "--backbone", "bundled:efficientnet_lite0", "--out", str(out),
        "--folds", "2", "--set", "preprocess.image_size=32", "--set", "adapt.baseline=false", "--quiet")
    rep = json.loads((out / "report.json").read_text())
    reasons = {Path(q["path"]).name: q["reason"] for q in rep["quarantined"]}
    assert {"corrupt.jpg", "truncated.png", "notes.png", "empty_class"} <= set(reasons), reasons
    assert "deep16.png" not in reasons  # 16-bit greyscale is converted, not quarantined
    assert rep["task"]["classes"] == ["digit0", "digit1", "digit7"]
    assert rep["task"]["n_train"] + rep["task"]["n_test"] == 25


def test_kill_during_finetune_then_resume(tmp_path: Path):
    data = write_digits_folder(tmp_path / "digits", per_class=10)
    out = tmp_path / "run"
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(experiment(data, out, ["linear_probe", "finetune"], folds=2, epochs=3)))
    proc = subprocess.Popen([sys.executable, "-m", "transfuse.cli", "run", str(cfg), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ckpt = out / "work" / "efficientnet_lite0_finetune" / "fold0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "fine-tuning never wrote a checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists()
    assert (out / "candidates" / "efficientnet_lite0_linear_probe" / "result.json").exists()
    p = cli("resume", str(out), "--quiet")
    assert "resume: efficientnet_lite0/linear_probe already done" in p.stderr + p.stdout
    rep = json.loads((out / "report.json").read_text())
    singles = [c["name"] for c in rep["candidates"] if c["kind"] == "single"]
    assert singles == ["efficientnet_lite0/linear_probe", "efficientnet_lite0/finetune"]
    assert all(c["kind"] == "fusion" for c in rep["candidates"][2:])
    ft = rep["candidates"][1]
    assert len(ft["cv_scores"]) == 2 and all(0 <= s <= 1 for s in ft["cv_scores"])
    assert {h["fold"] for h in ft["history"]} == {0, 1}
    # each fold picked its epoch on an inner split of its own training rows; the shipped model was
    # refitted on all training rows for the median of the folds' choices
    chosen = [f["epochs"] for f in ft["selected"]["folds"]]
    assert len(chosen) == 2 and all(1 <= e <= 3 for e in chosen)
    assert ft["selected"]["final"] == {"epochs": max(1, int(round(float(np.median(chosen)))))}
    assert set(rep["test"]) >= {"accuracy", "macro_f1", "log_loss", "ece"}
    assert (out / "model" / "model.json").exists()
    # a finished candidate's checkpoints are released (they only serve a resume midway)
    assert (out / "work" / "efficientnet_lite0_finetune" / "fold0" / "finetune.json").exists()
    assert not list((out / "work").glob("*/*/checkpoints"))


def test_run_refuses_a_folder_holding_another_experiment(probe_run: Path, tmp_path: Path):
    cfg = yaml.safe_load((probe_run / "config.yaml").read_text())
    cfg["seed"] = 1
    f = tmp_path / "other.yaml"
    f.write_text(yaml.safe_dump(cfg))
    p = cli("run", str(f), check=False)
    assert p.returncode == 2 and "holds a different experiment" in p.stderr and "Traceback" not in p.stderr


def test_multilayer_probe_shares_the_embedding_and_is_served(probe_run: Path, tmp_path: Path):
    """``multilayer_probe`` (with ``adapt.scales`` [1.5]: 48 px beside 32) beside ``linear_probe``:
    one embedding pass (the tapped multi-scale features, whose last columns the plain probe uses:
    its fold scores equal a plain-only run's), the plain features in the cache too, and the
    multilayer probe served from its options (taps, scales) with its test probabilities."""
    from transfuse.backbones import create_backbone
    from transfuse.data.registry import load_dataset
    from transfuse.train.cache import FeatureCache

    data, run, cache_dir = run_beside_plain(tmp_path, probe_run, lambda e: e["adapt"].update(scales=[1.5]),
                                            ["linear_probe", "multilayer_probe"])
    oof = [np.load(r / "candidates" / "efficientnet_lite0_linear_probe" / "proba.npz")["oof"] for r in (run, probe_run)]
    assert np.abs(oof[0] - oof[1]).max() < 1e-5
    spec = json.loads((run / "candidates" / "efficientnet_lite0_multilayer_probe" / "model.json").read_text())
    assert spec["kind"] == "probe" and spec["strategy"] == "multilayer_probe"
    assert spec["backbones"][0]["options"] == {"image_size": 32, "taps": 3, "scales": [48]}
    assert spec["backbones"][0]["feature_dim"] == 2 * 1904
    # the cache holds both: re-embedding either computes nothing, and the plain rows are a fresh
    # plain embedding's
    items = load_dataset("folder", str(data))
    cache = FeatureCache(cache_dir)
    plain = create_backbone("bundled:efficientnet_lite0", image_size=32)
    tapped = create_backbone("bundled:efficientnet_lite0", image_size=32, taps=3, scales=[48])
    got = cache.embed(plain, items)
    assert cache.last.n_computed == 0 and cache.last.n_items == 36
    assert np.abs(got - FeatureCache(tmp_path / "fresh").embed(plain, items)).max() < 1e-4
    cache.embed(tapped, items)
    assert cache.last.n_computed == 0
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([plain.cache_key(), tapped.cache_key()])
    # served from its folder alone: the report's test probabilities
    splits = json.loads((run / "splits.json").read_text())
    files = [items.items[i] for i in splits["test_idx"]]
    p = cli("predict", str(run), *files, "--json", "--candidate", "efficientnet_lite0/multilayer_probe")
    served = np.array([[row["proba"][c] for c in items.classes] for row in map(json.loads, p.stdout.splitlines())])
    ref = np.load(run / "candidates" / "efficientnet_lite0_multilayer_probe" / "proba.npz")["test"]
    assert served.shape == ref.shape == (9, 3) and np.abs(served - ref).max() < 1e-5


def test_a_finetune_at_its_own_image_size_is_trained_and_served_at_it(probe_run: Path, tmp_path: Path):
    """``train.finetune.image_size`` 48 in a 32-px run: LP-FT starts from a probe on 48-px features
    (embedded into the cache) and ships with ``image_size: 48``, served with its test probabilities;
    the linear probe keeps the run's 32 px (its folds score as in a run without the option)."""
    from transfuse.backbones import create_backbone
    from transfuse.data.registry import load_dataset
    from transfuse.train.cache import FeatureCache

    data, run, cache_dir = run_beside_plain(tmp_path, probe_run,
                                            lambda e: e["train"]["finetune"].update(image_size=48),
                                            ["linear_probe", "lp_ft"], epochs=1)
    options = {n: json.loads((run / "candidates" / f"efficientnet_lite0_{n}" / "model.json").read_text())
               ["backbones"][0]["options"] for n in ("linear_probe", "lp_ft")}
    assert options == {"linear_probe": {"image_size": 32}, "lp_ft": {"image_size": 48}}
    timings = json.loads((run / "report.json").read_text())["timings"]  # each size's embedding its own
    assert {"embed:efficientnet_lite0", "embed:efficientnet_lite0@48px"} <= set(timings)
    items = load_dataset("folder", str(data))
    cache = FeatureCache(cache_dir)
    for size in (32, 48):
        cache.embed(create_backbone("bundled:efficientnet_lite0", image_size=size), items)
        assert cache.last.n_computed == 0, size
    splits = json.loads((run / "splits.json").read_text())
    files = [items.items[i] for i in splits["test_idx"]]
    p = cli("predict", str(run), *files, "--json", "--candidate", "efficientnet_lite0/lp_ft")
    served = np.array([[row["proba"][c] for c in items.classes] for row in map(json.loads, p.stdout.splitlines())])
    ref = np.load(run / "candidates" / "efficientnet_lite0_lp_ft" / "proba.npz")["test"]
    assert served.shape == ref.shape == (9, 3) and np.abs(served - ref).max() < 1e-5
