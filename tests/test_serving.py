"""Every kind of saved model is served: ``transfuse predict RUN FILES --candidate NAME``
reproduces the test probabilities the run saved for that candidate (``candidates/NAME/proba.npz``),
and ``transfuse predict RUN FILES`` those of the chosen model (``model/test_proba.npy``, calibrated).

The tests are generated from the model kinds the code knows (:data:`transfuse.artifacts.spec.Kind`):
a new kind fails here until a run below produces and serves it. Every candidate the runs produce is
checked through :func:`transfuse.export.predict.predict` (what the CLI calls), and one candidate of
each sort (spec kind, strategy, method: e.g. probe/distill, finetune/lp_ft, ensemble/greedy) also
through the ``transfuse`` command itself, in a fresh process (a command is mostly start-up: all of
them would take minutes). Two small real runs: digits PNGs through EfficientNet-Lite0/Lite1 at 32 px
(probes, fine-tuning, LP-FT, a stacking ensemble of them, the feature fusion, a distilled student,
the joint fusion, each backbone's uniform and greedy soups of its three fine-tunes (one a seed variant), each fine-tune's
fold bag; the CV winner is a fusion), and WordNet glosses through TF-IDF and MiniLM-L3
(TF-IDF alone and inside every ensemble: mean, weighted, greedy, stacking).
"""

from __future__ import annotations

import json
import os
import shutil
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, run_config, write_digits_folder

from transfuse.adapt.result import safe_name
from transfuse.artifacts.spec import Kind, ModelSpec, load_spec

pytestmark = pytest.mark.real

TOL = 1e-5
ENSEMBLES = ("mean", "weighted", "greedy", "stacking")
STRATEGIES = ("linear_probe", "finetune", "lp_ft")
# two CLI processes at a time, one thread each: the start-up (imports) is most of a call's time
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_img")
    data = write_digits_folder(root / "digits", classes=(1, 7, 9), per_class=10)
    return run_config({
        "name": "serve_img", "seed": 0,
        "data": {"source": "folder", "path": str(data), "modality": "image"},
        "split": {"folds": 2, "test_size": 0.25}, "preprocess": {"image_size": 32},
        "backbones": ["bundled:efficientnet_lite0", "bundled:efficientnet_lite1"],
        "adapt": {"strategies": list(STRATEGIES), "baseline": False, "bag": True,
                  "variants": {"finetune_seed1": {"strategy": "finetune", "seed": 1}}},
        "train": {"finetune": {"epochs": 1, "max_train_batches": 2, "batch_size": 8, "lr": 1e-3,
                               "num_workers": 0}},
        "fuse": {"ensembles": ["stacking"], "distill": {"enabled": True},  # the text run has all four
                 "joint": {"enabled": True, "epochs": 1, "max_train_batches": 2, "batch_size": 8}},
        "output": {"dir": str(root / "run")}})


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_txt")
    return run_config({
        "name": "serve_txt", "seed": 0,
        "data": {"source": "wordnet", "modality": "text",
                 "options": {"supersenses": ["animal", "food", "artifact"], "max_per_class": 10}},
        "split": {"folds": 2, "test_size": 0.25},
        "backbones": ["tfidf", "bundled:minilm_l3"],
        "output": {"dir": str(root / "run")}})


def _test_inputs(run: Path, tmp: Path) -> tuple[list[str], list[str]]:
    """The run's test inputs (images: the PNGs; texts: the texts themselves) and the class order."""
    from transfuse.artifacts.store import RunFolder
    from transfuse.config import load_config

    cfg = load_config(run / "config.yaml")
    test = RunFolder(run).prepare_data(cfg).test
    return [str(p) for p in test.items], list(test.classes)


def _predict_cli(run: Path, inputs: list[str], classes: list[str], *extra: str) -> np.ndarray:
    """``transfuse predict RUN FILES --json``; texts go in one text file (one text per line, so
    their records are ``texts.txt:LINE``)."""
    args, names = inputs, inputs
    if not Path(inputs[0]).is_file():
        assert not any("\n" in t for t in inputs)
        f = run.parent / f"texts-{abs(hash(extra))}.txt"  # two calls at a time
        f.write_text("\n".join(inputs) + "\n", encoding="utf-8")
        args, names = [str(f)], [f"{f}:{i}" for i in range(1, len(inputs) + 1)]
    p = cli("predict", str(run), *args, "--json", *extra, env=CLI_ENV)
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["input"] for r in rows] == names
    return np.array([[r["proba"][c] for c in classes] for r in rows])


def _diff(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max()) if got.shape == ref.shape else np.inf


@dataclass
class Served:
    run: str  # "image" | "text"
    name: str
    spec: ModelSpec
    diff: float = np.inf  # max |predicted - saved test probabilities|
    by_cli: bool = False  # through `transfuse predict` (else export.predict.predict in this process)

    @property
    def sort(self) -> tuple[str, str | None, str | None]:
        return self.spec.kind, self.spec.strategy, self.spec.method


@pytest.fixture(scope="module")
def served(image_run: Path, text_run: Path, tmp_path_factory) -> dict[tuple[str, str], Served]:
    """``{(run, candidate): Served}`` over both runs."""
    from transfuse.export.predict import predict

    tmp = tmp_path_factory.mktemp("inputs")
    runs = {"text": text_run, "image": image_run}  # text first: its ensembles hold TF-IDF
    inputs = {k: _test_inputs(run, tmp / k) for k, run in runs.items()}
    out: dict[tuple[str, str], Served] = {}
    for key, run in runs.items():
        for f in sorted((run / "candidates").iterdir()):
            if (f / "result.json").is_file():
                name = json.loads((f / "result.json").read_text())["name"]
                out[key, name] = Served(key, name, load_spec(f))
    firsts: dict[tuple, Served] = {}
    for s in out.values():
        firsts.setdefault(s.sort, s)

    def saved(s: Served) -> np.ndarray:
        with np.load(runs[s.run] / "candidates" / safe_name(s.name) / "proba.npz") as z:
            return z["test"]

    def check(s: Served) -> float:
        return _diff(_predict_cli(runs[s.run], *inputs[s.run], "--candidate", s.name), saved(s))

    with ThreadPoolExecutor(2) as pool:  # the command: one candidate of each sort
        for s, d in zip(firsts.values(), pool.map(check, firsts.values())):
            s.diff, s.by_cli = d, True
    for s in out.values():  # the others: the same function, in this process
        if not s.by_cli:
            s.diff = _diff(predict(runs[s.run], inputs[s.run][0], candidate=s.name, engine="torch")["proba"],
                           saved(s))
    return out


@pytest.mark.parametrize("kind", typing.get_args(Kind))
def test_every_kind_is_served_by_predict(served: dict[tuple[str, str], Served], kind: str):
    """At least one candidate of each model kind; predict reproduces every one of them (the
    ``transfuse predict --candidate`` command one of each sort, at least one of this kind)."""
    mine = {f"{r}:{n}": s for (r, n), s in served.items() if s.spec.kind == kind}
    assert mine, f"no candidate of model kind {kind!r} is produced by the runs of this test; add one"
    assert any(s.by_cli for s in mine.values())
    bad = {n: (s.diff, "transfuse predict" if s.by_cli else "predict()") for n, s in mine.items()
           if not s.diff <= TOL}
    assert not bad, f"predict does not reproduce the run's test probabilities (max |diff|): {bad}"


def test_the_runs_produce_every_candidate_asked_for(served: dict[tuple[str, str], Served]):
    img = {n for r, n in served if r == "image"}
    txt = {n for r, n in served if r == "text"}
    singles = {f"{b}/{s}" for b in ("efficientnet_lite0", "efficientnet_lite1") for s in STRATEGIES}
    fusions = {f"fusion/{m}" for m in ("stacking", "features", "joint")}
    soups = {f"soup/{b}/{m}" for b in ("efficientnet_lite0", "efficientnet_lite1") for m in ("uniform", "greedy")}
    assert singles | fusions | soups <= img
    for n in soups:  # one network of the backbone: a fine-tuned model to serve and export
        assert served["image", n].sort == ("finetune", "soup", n.rsplit("/", 1)[1] + "_soup")
    student = [n for n in img if n.startswith("distill/")]
    assert len(student) == 1 and served["image", student[0]].sort == ("probe", "distill", None)
    assert {"tfidf", "minilm_l3/linear_probe"} | {f"fusion/{m}" for m in ENSEMBLES} == txt
    assert served["text", "tfidf"].spec.kind == "raw"
    for m in ENSEMBLES:  # TF-IDF is fused like any member; the command served each such ensemble
        s = served["text", f"fusion/{m}"]
        assert sorted(s.spec.members) == ["minilm_l3/linear_probe", "tfidf"] and s.by_cli
    # the sorts the command checked: one of each
    assert {s.sort for s in served.values() if s.by_cli} == {s.sort for s in served.values()}


def test_chosen_model_is_served_by_predict(image_run: Path, text_run: Path, tmp_path: Path):
    """``transfuse predict RUN`` (no --candidate) gives ``model/test_proba.npy``: the chosen
    candidate with its calibration temperature; on the image run the CV winner is a fusion."""
    from transfuse.export.predict import predict

    rep = json.loads((image_run / "report.json").read_text())
    kinds = {c["name"]: c["kind"] for c in rep["candidates"]}
    assert kinds[rep["chosen"]] == "fusion", f"the image run chose {rep['chosen']}, not a fusion"
    spec = load_spec(image_run / "model")
    assert spec.candidate == rep["chosen"] and spec.temperature is not None  # calibrated
    files, classes = _test_inputs(image_run, tmp_path / "image")
    ref = np.load(image_run / "model" / "test_proba.npy")
    assert _diff(_predict_cli(image_run, files, classes), ref) <= TOL
    files, _ = _test_inputs(text_run, tmp_path / "text")
    ref = np.load(text_run / "model" / "test_proba.npy")
    assert _diff(predict(text_run, files, engine="torch")["proba"], ref) <= TOL


def test_export_refuses_a_tfidf_ensemble_and_exports_the_feature_fusion(image_run: Path, text_run: Path,
                                                                        tmp_path: Path):
    run = tmp_path / "run"  # a copy: the export changes what predict --candidate uses (onnx)
    shutil.copytree(image_run, run)
    with ThreadPoolExecutor(2) as pool:
        refused, p = pool.map(lambda a: cli("export", *a, check=False, env=CLI_ENV),
                              [(str(text_run), "--candidate", "fusion/stacking"),
                               (str(run), "--candidate", "fusion/features")])
    assert refused.returncode == 2, refused.stderr
    assert "is a raw-input estimator (TF-IDF), which ONNX cannot hold" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.strip().count("\n") == 0
    assert not (text_run / "candidates" / "fusion_stacking" / "model.onnx").exists()
    assert p.returncode == 0, p.stderr[-3000:]
    assert "parity max |p_onnx - p_torch|" in p.stdout
    meta = json.loads((run / "candidates" / "fusion_features" / "onnx.json").read_text())
    assert meta["kind"] == "features" and meta["inputs"] == ["m0.input", "m1.input"]
    assert meta["parity_max_abs_diff"] <= 1e-4


def test_batch_predict_reads_folders_tables_and_text_files_and_writes_tables(image_run: Path, text_run: Path,
                                                                             tmp_path: Path):
    """``predict RUN FOLDER --csv T --out F.csv``: a folder is its images, a manifest's relative
    paths are read from its folder, the CSV has a header and a probability column per class. For
    a text model a .txt file is one text per (non-blank) line, a CSV's ``text`` column is texts, and
    ``--text WORD`` is that word even when a file of that name exists; records name their line."""
    import csv

    from transfuse.export.predict import predict

    probe = "efficientnet_lite0/linear_probe"  # a light model: this test is about inputs and outputs
    files, classes = _test_inputs(image_run, tmp_path)
    folder = Path(files[0]).parent
    in_folder = sorted(str(f) for f in folder.glob("*.png"))
    (tmp_path / "m.csv").write_text("path\n" + "\n".join(f"{os.path.relpath(f, tmp_path)}" for f in files[:2])
                                    + "\nmissing.png\n")
    with ThreadPoolExecutor(2) as pool:
        img = pool.submit(cli, "predict", str(image_run), str(folder), "--csv", str(tmp_path / "m.csv"),
                          "--out", str(tmp_path / "p.csv"), "--candidate", probe, check=False, env=CLI_ENV)
        (tmp_path / "cheese").write_text("a domesticated carnivorous mammal\n")
        (tmp_path / "t.txt").write_text("a dog that barks\n\nbread made of flour\n")
        (tmp_path / "t.csv").write_text('id,text\n7,"a cat, small"\n')
        txt = pool.submit(cli, "predict", str(text_run), "t.txt", "--text", "cheese", "--csv", "t.csv",
                          "--candidate", "tfidf", check=False, env=CLI_ENV, cwd=tmp_path)
        img, txt = img.result(), txt.result()
    assert img.returncode == 1 and "1 of" in img.stderr and "p.csv" in img.stderr  # missing.png: a record
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert list(rows[0]) == ["input", "label", "confidence", "error", *(f"p_{c}" for c in classes)]
    assert [r["input"] for r in rows] == in_folder + [os.path.relpath(f, tmp_path) for f in files[:2]] + ["missing.png"]
    assert rows[-1]["error"] == "file not found" and rows[-1]["label"] == ""
    ref = predict(image_run, in_folder + files[:2], candidate=probe)["proba"]
    got = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows[:-1]])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert [r["label"] for r in rows[:-1]] == [classes[k] for k in ref.argmax(1)]

    assert txt.returncode == 0, txt.stderr
    lines = txt.stdout.splitlines()
    assert lines[0] == "input\tlabel\tconfidence"
    assert [line.split("\t")[0] for line in lines[1:]] == ["t.txt:1", "t.txt:3", "cheese", "t.csv:2"]
    texts = ["a dog that barks", "bread made of flour", "cheese", "a cat, small"]
    ref = predict(text_run, texts, candidate="tfidf")
    names = ref["classes"]
    assert [line.split("\t")[1:] for line in lines[1:]] == [[names[k], f"{p[k]:.4f}"] for p, k in
                                                            zip(ref["proba"], ref["proba"].argmax(1))]


def test_soups_are_made_of_each_fold_and_the_refits(image_run: Path):
    """``fit`` with ``finetune``, ``lp_ft`` and a seed variant of ``finetune`` (``adapt.variants``)
    offers soups of the three (:mod:`transfuse.fuse.soups`): each outer fold's greedy soup chooses
    among that fold's models; the uniform soup that ships holds, tensor by tensor, the mean of its
    ingredients' shipped weights (computed here from their files, not by the merge engine); one
    backbone's size."""
    import torch
    from safetensors.torch import load_file

    rep = {c["name"]: c for c in json.loads((image_run / "report.json").read_text())["candidates"]}
    for b in ("efficientnet_lite0", "efficientnet_lite1"):
        ingredients = [f"{b}/finetune", f"{b}/lp_ft", f"{b}/finetune_seed1"]
        assert rep[f"{b}/finetune_seed1"]["strategy"] == "finetune"
        uniform, greedy = rep[f"soup/{b}/uniform"], rep[f"soup/{b}/greedy"]
        assert uniform["members"] == ingredients and uniform["kind"] == "fusion" and len(uniform["cv_scores"]) == 2
        assert uniform["params"] == rep[ingredients[0]]["params"]
        folds = greedy["selected"]["folds"]
        assert len(folds) == 2 and all(f["kept"] and set(f["kept"]) <= set(ingredients) for f in folds)
        assert greedy["members"] and set(greedy["members"]) <= set(ingredients)
        assert {h["fold"] for h in greedy["history"]} == {0, 1}
    folder = image_run / "candidates" / safe_name("soup/efficientnet_lite0/uniform")
    soup = load_file(folder / "model.safetensors")
    parts = [load_file(image_run / "candidates" / safe_name(n) / "model.safetensors")
             for n in ("efficientnet_lite0/finetune", "efficientnet_lite0/lp_ft", "efficientnet_lite0/finetune_seed1")]
    assert set(soup) == set(parts[0]) == set(parts[1]) == set(parts[2])
    moved = reseeded = 0
    for k, v in soup.items():
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), sum(p[k].double() for p in parts) / 3, rtol=1e-6, atol=1e-6, msg=k)
            moved += int(not torch.equal(parts[0][k], parts[1][k]))
            reseeded += int(not torch.equal(parts[0][k], parts[2][k]))  # the same settings, another seed
    assert moved > 10 and reseeded > 10  # the ingredients differ: not a vacuous check
