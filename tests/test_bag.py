"""Fold bags (``adapt.bag``): a fine-tuned candidate's k fold models as one more candidate, no
refit. Its probabilities are the mean of the fold models' (each loaded on its own here), its CV is
the refitted candidate's own out-of-fold predictions, it is served without ``work/`` and its export
graph matches serving, and under a time limit it ships where the refit does not fit (a run) or is
stopped (the cross-fit loop). Real runs: digits PNGs through EfficientNet-Lite0 at 32 px, 2 folds,
1 epoch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, run_config, write_digits_folder

from transfuse.adapt.result import safe_name

pytestmark = pytest.mark.real

LP_FT, BAG = "efficientnet_lite0/lp_ft", "bag/efficientnet_lite0/lp_ft"
# the command in a fresh process: one thread, as below
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small networks on two busy shared cores: one thread is about 2.5x faster (measured on
    this test's run: 21 s against 57 s at load 5)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _config(root: Path, **over) -> dict:
    data = write_digits_folder(root / "digits", classes=(0, 1, 7), per_class=10)
    cfg = {"name": "bag", "seed": 0, "data": {"source": "folder", "path": str(data), "modality": "image"},
           "split": {"folds": 2, "test_size": 0.25}, "preprocess": {"image_size": 32},
           "backbones": ["bundled:efficientnet_lite0"], "adapt": {"strategies": ["lp_ft"], "baseline": False, "bag": True},
           "train": {"finetune": {"epochs": 1, "batch_size": 8, "num_workers": 0}},
           "output": {"dir": str(root / "run")}}
    return {**cfg, **over}


def _test_part(run: Path):
    from transfuse.artifacts.store import RunFolder
    from transfuse.config import load_config

    return RunFolder(run).prepare_data(load_config(run / "config.yaml")).test


def _saved(run: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(run / "candidates" / safe_name(name) / "proba.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def bag_run(tmp_path_factory) -> Path:
    return run_config(_config(tmp_path_factory.mktemp("bag")))


def test_the_bag_is_the_mean_of_the_fold_models(bag_run: Path):
    """Each fold model loaded from the run's work folder on its own: the mean of their test
    probabilities is the bag's saved test probabilities and what the served bag predicts; the bag's
    folder holds its own copy of every fold's weights."""
    from safetensors.torch import load_file

    from transfuse.artifacts.serve import load_model, predict_proba
    from transfuse.artifacts.spec import load_spec
    from transfuse.backbones.registry import create_backbone
    from transfuse.train.finetune import Classifier

    test = _test_part(bag_run)
    ref = load_spec(bag_run / "candidates" / safe_name(LP_FT)).backbone
    folds = []
    for k in range(2):
        weights = load_file(str(bag_run / "work" / safe_name(LP_FT) / f"fold{k}" / "model.safetensors"))
        net = Classifier(create_backbone(ref.name, **ref.options), 3)
        net.load_state_dict(weights, strict=True)
        folds.append(net.eval().predict_proba(test, batch_size=4))
        shipped = load_file(str(bag_run / "candidates" / safe_name(BAG) / f"fold{k}.safetensors"))
        assert shipped.keys() == weights.keys() and all((shipped[n] == weights[n]).all() for n in weights)
    mean = np.mean(folds, axis=0)
    assert not np.allclose(folds[0], folds[1], atol=1e-3)  # two different models
    np.testing.assert_allclose(_saved(bag_run, BAG)["test"], mean, atol=1e-6)
    model, spec = load_model(bag_run / "candidates" / safe_name(BAG))
    assert (spec.kind, spec.strategy, spec.members, spec.params) == ("bag", "bag", [LP_FT], {"folds": 2})
    np.testing.assert_allclose(predict_proba(model, spec, test), mean, atol=1e-6)


def test_the_bags_cv_is_its_candidates_out_of_fold_predictions(bag_run: Path):
    """Same out-of-fold rows, same fold scores (exactly); the refit wins the tie; the bag's test
    accuracy is read once from its own test probabilities; it is not fused beside its refit."""
    rep = json.loads((bag_run / "report.json").read_text())
    cands = {c["name"]: c for c in rep["candidates"]}
    assert list(cands) == [LP_FT, BAG]
    bag, lp_ft = cands[BAG], cands[LP_FT]
    np.testing.assert_array_equal(_saved(bag_run, BAG)["oof"], _saved(bag_run, LP_FT)["oof"])
    assert bag["cv_scores"] == lp_ft["cv_scores"] and bag["cv_mean"] == lp_ft["cv_mean"]
    assert (bag["kind"], bag["strategy"], bag["members"]) == ("fusion", "bag", [LP_FT])
    assert bag["selected"] == {"folds": lp_ft["selected"]["folds"]}
    assert rep["chosen"] == LP_FT
    test = _test_part(bag_run)
    assert bag["test"]["accuracy"] == float((_saved(bag_run, BAG)["test"].argmax(1) == test.labels).mean())
    assert json.loads((bag_run / "fusion.json").read_text())["members"] == [LP_FT]


def test_the_bag_is_served_without_the_work_folder_and_its_export_graph_matches(bag_run: Path, tmp_path: Path):
    """A copy of the run without ``work/``: ``transfuse predict --candidate bag/...`` gives the
    saved test probabilities and the report's test accuracy, ``Run.predict(candidate=)`` the same
    labels. The graph ``transfuse export`` traces (one image input, a temperature folded in)
    matches the serving path; the ONNX trace itself (about 40 s for two EfficientNets) is the one
    every fine-tuned model goes through (tests/test_export.py)."""
    import torch

    import transfuse
    from transfuse.artifacts.serve import load_model, predict_proba
    from transfuse.export.onnx import build_graph, collate_parts

    run = tmp_path / "run"
    shutil.copytree(bag_run, run, ignore=shutil.ignore_patterns("work"))
    test = _test_part(run)
    files = [str(p) for p in test.items]
    p = cli("predict", str(run), *files, "--candidate", BAG, "--json", env=CLI_ENV)
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    proba = np.array([[r["proba"][c] for c in test.classes] for r in rows])
    np.testing.assert_allclose(proba, _saved(run, BAG)["test"], atol=1e-5)
    rep = json.loads((run / "report.json").read_text())
    accuracy = next(c["test"]["accuracy"] for c in rep["candidates"] if c["name"] == BAG)
    assert float((proba.argmax(1) == test.labels).mean()) == accuracy
    labels = transfuse.load(run).predict(files, candidate=BAG, engine="torch")
    assert list(labels) == [test.classes[i] for i in proba.argmax(1)]
    folder = run / "candidates" / safe_name(BAG)
    model, spec = load_model(folder)
    spec = spec.model_copy(update={"temperature": 1.7})
    graph, parts = build_graph(model, spec, folder)
    with torch.no_grad():
        p_graph = graph(*collate_parts(parts, test, range(len(test)))).numpy()
    assert [p.names for p in parts] == [["input"]]
    assert np.abs(p_graph - predict_proba(model, spec, test)).max() <= 1e-5


def test_cross_fit_keeps_the_folds_when_the_refit_is_left_out_or_stopped():
    """With ``bag`` the fold fits and their mean test probabilities come back beside the refit; the
    refit left out by the plan, or stopped by the deadline once the folds are done, leaves the same
    out-of-fold rows and no refit (a real probe on sklearn's digits, a real budget)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold

    from transfuse.adapt.cross_fit import cross_fit
    from transfuse.adapt.probe import ProbeStrategy
    from transfuse.budget import Budget, budgeted
    from transfuse.config import HeadConfig

    d = load_digits()
    X, y, X_test = d.data[:240], d.target[:240], d.data[240:300]
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    probe = ProbeStrategy(HeadConfig(), X, X_test, y, 10)
    plain = cross_fit(probe, y, folds, 10, "accuracy", 0)
    bag = cross_fit(probe, y, folds, 10, "accuracy", 0, bag=True)
    np.testing.assert_array_equal(bag.oof, plain.oof)
    np.testing.assert_array_equal(bag.test, plain.test)
    assert bag.scores == plain.scores and len(bag.folds) == 3 and bag.refit_skipped is None
    fold_test = [probe.predict(f, None) for f in bag.folds]
    assert not np.allclose(fold_test[0], fold_test[1])
    np.testing.assert_allclose(bag.fold_test, np.mean(fold_test, axis=0), atol=1e-6)
    planned = cross_fit(probe, y, folds, 10, "accuracy", 0, bag=True, refit=False)
    assert (planned.final, planned.test, planned.refit_skipped) == (None, None, "left out by the time-limit plan")
    np.testing.assert_array_equal(planned.oof, plain.oof)
    budget = Budget(3600)

    class DeadlineAfterTheFolds(ProbeStrategy):
        def predict(self, fit, rows):
            if rows is None:  # the folds' test part: the last step before the refit
                budget.start -= budget.left() + 1.0
            return super().predict(fit, rows)

    with budgeted(budget):
        stopped = cross_fit(DeadlineAfterTheFolds(HeadConfig(), X, X_test, y, 10), y, folds, 10, "accuracy", 0,
                            bag=True)
    assert stopped.final is None and stopped.refit_skipped == "stopped at the time limit (refit)"
    np.testing.assert_array_equal(stopped.oof, plain.oof)
    np.testing.assert_allclose(stopped.fold_test, bag.fold_test, atol=1e-6)


def test_a_time_limit_ships_the_bag_where_the_refit_does_not_fit(tmp_path: Path, monkeypatch):
    """partial_ft under a time limit: the plan (from a measured step made to cost 10 s) has room for
    its folds and not for its refit, so the folds run and the bag ships (its fold networks are
    the whole backbone with each fold's trained top, served like the cached tops predicted). A
    resume keeps the bag without retrying the refit."""
    import transfuse
    import transfuse.train.finetune as ft
    from transfuse.budget import active_budget
    from transfuse.config import validate_config
    from transfuse.pipeline import run_experiment
    from transfuse.pipeline.plan import SAFETY, finetune_seconds

    def measure_step(backbone, train, *a, **k):
        est = [SAFETY * finetune_seconds(10.0, 5.0, 8, len(train), 8, 2, 0.2, 1, refit=r, bag=True)
               for r in (False, True)]
        b = active_budget()
        b.start += sum(est) / 2 - b.left()  # between the estimates without and with the refit
        return ft.StepCost(train_step=10.0, infer_batch=5.0, batch_size=8)

    monkeypatch.setattr(ft, "measure_step", measure_step)
    cfg = validate_config(_config(tmp_path, adapt={"strategies": ["partial_ft"], "baseline": False},
                                  budget={"time_limit": 3600}, fuse={"enabled": False}))
    rep = run_experiment(cfg, progress=False)
    partial, bag = "efficientnet_lite0/partial_ft", "bag/efficientnet_lite0/partial_ft"
    assert [c["name"] for c in rep["candidates"]] == [bag] and rep["chosen"] == bag
    assert rep["skipped"] == [
        {"name": partial, "reason": f"time limit: refit left out by the time-limit plan; {bag} ships instead"}]
    decisions = [(d["name"], d["action"], d.get("refit")) for d in rep["plan"]["decisions"]]
    assert decisions == [(partial, "run", False), (partial, "bag", None)]
    assert rep["plan"]["decisions"][0]["reason"].endswith("the fold bag ships instead")
    run = tmp_path / "run"
    assert not (run / "work" / safe_name(partial)).exists()
    test = _test_part(run)
    files = [str(p) for p in test.items]
    served = transfuse.load(run)
    order = [served.classes.index(c) for c in test.classes]
    np.testing.assert_allclose(served.predict_proba(files, engine="torch")[:, order],
                               np.load(run / "model" / "test_proba.npy"), atol=1e-5)  # calibrated
    np.testing.assert_allclose(served.predict_proba(files, candidate=bag, engine="torch")[:, order],
                               _saved(run, bag)["test"], atol=1e-5)
    again = run_experiment(cfg, progress=False)
    assert [c["name"] for c in again["candidates"]] == [bag] and again["skipped"] == rep["skipped"]
    assert not (run / "work" / safe_name(partial)).exists()


def test_a_bag_stands_in_for_its_candidate_as_a_fusion_member_only_without_its_refit():
    from transfuse.adapt.result import CandidateResult
    from transfuse.config import FuseConfig
    from transfuse.fuse.candidates import select_members

    def cand(name: str, kind: str = "single", **kw) -> CandidateResult:
        p = np.full((4, 2), 0.5, np.float32)
        return CandidateResult(name=name, kind=kind, oof=p, test=p, cv_scores=[0.5], **kw)

    probe, lp_ft = cand("b/linear_probe"), cand("b/lp_ft")
    bag = cand("bag/b/lp_ft", "fusion", strategy="bag", members=["b/lp_ft"])
    names = lambda rs: sorted(r.name for r in select_members(FuseConfig(), rs)[0])  # noqa: E731
    assert names([probe, lp_ft, bag]) == ["b/linear_probe", "b/lp_ft"]
    assert names([probe, bag]) == ["b/linear_probe", "bag/b/lp_ft"]


def test_adapt_bag_is_validated():
    from transfuse.config import validate_config
    from transfuse.errors import UserError

    from transfuse.pipeline.singles import bags_on

    plain = validate_config({"backbones": ["bundled:minilm_l3"], "data": {"modality": "text"}})
    assert plain.adapt.bag is None and bags_on(plain) is False  # without a limit the refit always wins the tie
    limited = validate_config({"backbones": ["bundled:minilm_l3"], "data": {"modality": "text"},
                               "budget": {"time_limit": 600}})
    assert bags_on(limited) is True
    assert bags_on(validate_config({"backbones": ["bundled:minilm_l3"], "data": {"modality": "text"},
                                    "budget": {"time_limit": 600}, "adapt": {"bag": False}})) is False
    with pytest.raises(UserError) as e:
        validate_config({"backbones": ["bundled:minilm_l3"], "data": {"modality": "text"}, "adapt": {"bag": "maybe"}})
    assert len(str(e.value).splitlines()) == 1 and "adapt.bag" in str(e.value), str(e.value)
