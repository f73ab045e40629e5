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

    measured = []

    def measure_step(backbone, train, *a, **k):
        measured.append((type(backbone).__name__, type(train.items[0]).__name__))
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
    assert measured == [("TimmTop", "Tensor")]  # the step that is planned: the top's, on cached activations
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


def test_cross_fit_runs_only_the_first_folds_when_asked():
    """``n_folds`` (a time limit's plan): only the first folds are fitted and scored, the same
    numbers as those folds of a full cross-fit; the other folds' rows are zeros; the bag is the
    mean of the fitted folds' test probabilities. A refit with some folds is refused."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold

    from transfuse.adapt.bag import bag_result, folds_run
    from transfuse.adapt.cross_fit import cross_fit
    from transfuse.adapt.probe import ProbeStrategy
    from transfuse.config import HeadConfig

    d = load_digits()
    X, y, X_test = d.data[:240], d.target[:240], d.data[240:300]
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    fitted = []

    class Counting(ProbeStrategy):
        def fit(self, rows, seed, tag, chosen=None):
            fitted.append(tag)
            return super().fit(rows, seed, tag, chosen)

    probe = Counting(HeadConfig(), X, X_test, y, 10)
    full = cross_fit(probe, y, folds, 10, "accuracy", 0, bag=True, refit=False)
    fitted.clear()
    one = cross_fit(probe, y, folds, 10, "accuracy", 0, bag=True, refit=False, n_folds=1)
    assert fitted == ["fold0"] and (one.folds_run, one.folds_total) == (1, 3)
    assert one.scores == full.scores[:1] and len(one.folds) == 1
    np.testing.assert_array_equal(one.oof[folds[0][1]], full.oof[folds[0][1]])
    assert not one.oof[np.concatenate([folds[1][1], folds[2][1]])].any()
    np.testing.assert_allclose(one.fold_test, probe.predict(one.folds[0], None), atol=1e-6)
    assert one.refit_skipped == "left out by the time-limit plan (ran 1 of 3 folds)"
    r = bag_result("b/lp_ft", one, "b", 10, 1.0)
    assert folds_run(r) == (1, 3) and folds_run(bag_result("b/lp_ft", full, "b", 10, 1.0)) is None
    assert full.folds_run is None and cross_fit(probe, y, folds, 10, "accuracy", 0, bag=True, refit=False,
                                                 n_folds=3).folds_run is None
    with pytest.raises(ValueError, match="n_folds < len"):
        cross_fit(probe, y, folds, 10, "accuracy", 0, bag=True, n_folds=1)


def test_a_bag_of_some_folds_is_chosen_only_over_the_leader_on_the_same_rows():
    """The leader is the best by CV mean over all folds; a bag that ran m folds wins only if it
    beats the leader's score on those m folds (not the leader's mean over all of them); it is no
    fusion member."""
    from transfuse.adapt.result import CandidateResult
    from transfuse.config import FuseConfig
    from transfuse.fuse.candidates import select_members
    from transfuse.pipeline.report import choose

    p = np.full((4, 2), 0.5, np.float32)

    def cand(name, scores, kind="single", **kw):
        return CandidateResult(name=name, kind=kind, oof=p, test=p, cv_scores=scores, **kw)

    leader = cand("b/linear_probe", [0.9, 0.5, 0.5, 0.5, 0.5])  # mean 0.58
    other = cand("c/linear_probe", [0.6, 0.55, 0.55, 0.55, 0.55])  # mean 0.56
    bag = dict(kind="fusion", strategy="bag", members=["b/lp_ft"],
               selected={"folds": [{}], "folds_run": [1, 5], "refit_skipped": "left out"})
    weak = cand("bag/b/lp_ft", [0.8], **bag)  # above the leader's mean, below its fold 0
    chosen, trail = choose([leader, other, weak])
    assert chosen is leader
    assert trail == [{"challenger": "bag/b/lp_ft", "leader": "b/linear_probe", "folds": 1, "challenger_score": 0.8,
                      "leader_score": 0.9, "chosen": "b/linear_probe"}]
    strong = cand("bag/b/lp_ft", [0.95], **bag)
    assert choose([leader, other, strong])[0] is strong
    assert choose([leader, other])[1] == [] and choose([weak])[0] is weak
    members, excluded = select_members(FuseConfig(), [leader, other, strong])
    assert [m.name for m in members] == ["b/linear_probe", "c/linear_probe"]
    assert excluded["bag/b/lp_ft"] == ("scored on 1 of 5 folds only (time limit): no out-of-fold predictions "
                                       "on the other folds' rows")


def test_a_time_limit_runs_only_the_folds_that_fit(tmp_path: Path, monkeypatch):
    """LP-FT under a time limit whose plan (from a measured step made to cost 10 s) has room for 1
    of the 2 folds only: that fold runs, its bag is scored on its rows and challenges the probe on
    them (report["choice"]), the chosen model is calibrated on its scored rows, and the served
    bag predicts what was saved."""
    import transfuse
    import transfuse.train.finetune as ft
    from transfuse.budget import active_budget
    from transfuse.config import validate_config
    from transfuse.pipeline import run_experiment
    from transfuse.pipeline.plan import SAFETY, finetune_seconds

    measured = []

    def measure_step(backbone, train, *a, **k):
        measured.append((type(backbone).__name__, type(train.items[0]).__name__))
        est = [SAFETY * finetune_seconds(10.0, 5.0, 8, len(train), 8, 2, 0.2, 1, refit=False, bag=True, run_folds=m)
               for m in (1, 2)]
        b = active_budget()
        b.start += sum(est) / 2 - b.left()  # between the estimates of 1 fold and of 2
        return ft.StepCost(train_step=10.0, infer_batch=5.0, batch_size=8)

    monkeypatch.setattr(ft, "measure_step", measure_step)
    cfg = validate_config(_config(tmp_path, adapt={"strategies": ["linear_probe", "lp_ft"], "baseline": False},
                                  budget={"time_limit": 3600}, fuse={"enabled": False}))
    rep = run_experiment(cfg, progress=False)
    probe = "efficientnet_lite0/linear_probe"
    assert [m[0] for m in measured] == ["TimmBackbone"]  # LP-FT's step: through the whole network
    assert [c["name"] for c in rep["candidates"]] == [probe, BAG]
    cands = {c["name"]: c for c in rep["candidates"]}
    assert cands[BAG]["selected"]["folds_run"] == [1, 2] and len(cands[BAG]["cv_scores"]) == 1
    assert rep["skipped"] == [{"name": LP_FT, "reason": "time limit: refit left out by the time-limit plan (ran 1 "
                               f"of 2 folds); {BAG} ships instead"}]
    d = next(d for d in rep["plan"]["decisions"] if d["name"] == LP_FT and d["action"] == "run")
    assert (d["epochs"], d["refit"], d["folds"]) == (1, False, 1)
    mine, theirs = cands[BAG]["cv_scores"][0], cands[probe]["cv_scores"][0]
    assert rep["choice"] == [{"challenger": BAG, "leader": probe, "folds": 1, "challenger_score": mine,
                              "leader_score": theirs, "chosen": BAG if mine > theirs else probe}]
    assert rep["chosen"] == rep["choice"][0]["chosen"]
    run = tmp_path / "run"
    fold0 = len(json.loads((run / "splits.json").read_text())["folds"][0]["val"])
    card = (run / "model" / "README.md").read_text()
    if rep["chosen"] == BAG:
        assert rep["calibration"]["fitted_on"].endswith(f"(the {fold0} rows of the 1 folds it ran)")
        assert (f"Under the time limit it ran on 1 of the 2 folds only; on those folds' rows its cross-validated "
                f"accuracy ({mine:.4f}) beat that of {probe} ({theirs:.4f})") in card
    else:
        assert "It has the best cross-validated accuracy" in card
    test = _test_part(run)
    files = [str(p) for p in test.items]
    served = transfuse.load(run)
    order = [served.classes.index(c) for c in test.classes]
    np.testing.assert_allclose(served.predict_proba(files, candidate=BAG, engine="torch")[:, order],
                               _saved(run, BAG)["test"], atol=1e-5)
    assert "1 of 2 folds" in (run / "report.html").read_text()


def test_a_planned_bag_stopped_by_the_deadline_keeps_the_folds_that_finished():
    """A bag planned without its refit that the deadline stops in fold 2 of 3 ships fold 1 alone,
    scored on its rows (the same numbers as that fold of a full cross-fit); with the refit planned
    the candidate is dropped as before (the error propagates)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold

    from transfuse.adapt.cross_fit import cross_fit
    from transfuse.adapt.probe import ProbeStrategy
    from transfuse.budget import Budget, TimeLimitReached, budgeted
    from transfuse.config import HeadConfig

    d = load_digits()
    X, y, X_test = d.data[:240], d.target[:240], d.data[240:300]
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    full = cross_fit(ProbeStrategy(HeadConfig(), X, X_test, y, 10), y, folds, 10, "accuracy", 0, bag=True,
                     refit=False)

    def run(refit: bool):
        budget = Budget(3600)

        class DeadlineAfterFoldOne(ProbeStrategy):
            def predict(self, fit, rows):
                if rows is not None and len(rows) == len(folds[0][1]) and (rows == folds[0][1]).all():
                    budget.start -= budget.left() + 1.0  # fold 1 done: the time is up
                return super().predict(fit, rows)

        with budgeted(budget):
            return cross_fit(DeadlineAfterFoldOne(HeadConfig(), X, X_test, y, 10), y, folds, 10, "accuracy", 0,
                             bag=True, refit=refit)

    kept = run(refit=False)
    assert (kept.folds_run, kept.folds_total, len(kept.folds), kept.final) == (1, 3, 1, None)
    assert kept.scores == full.scores[:1]
    assert kept.refit_skipped.startswith("stopped at the time limit (fold 2 of 3") and \
        kept.refit_skipped.endswith(") after 1 of 3 folds")
    np.testing.assert_array_equal(kept.oof[folds[0][1]], full.oof[folds[0][1]])
    assert not kept.oof[folds[1][1]].any()
    with pytest.raises(TimeLimitReached):
        run(refit=True)


def test_the_model_card_says_why_a_bag_of_some_folds_was_chosen():
    """The card's "why" names the folds and both same-rows scores when the partial bag won the
    choice, and keeps the usual sentence when the leader did."""
    from transfuse.artifacts.card import render_card
    from transfuse.artifacts.spec import ModelSpec

    cands = [{"name": "bag/b/lp_ft", "kind": "fusion", "cv_mean": 0.9, "cv_std": 0.0, "cv_scores": [0.9],
              "selected": {"folds_run": [1, 5]}},
             {"name": "b/linear_probe", "kind": "single", "cv_mean": 0.8, "cv_std": 0.01, "cv_scores": [0.85] * 5}]
    choice = {"challenger": "bag/b/lp_ft", "leader": "b/linear_probe", "folds": 1, "challenger_score": 0.9,
              "leader_score": 0.85}
    report = {"name": "r", "modality": "text", "metric": "accuracy", "cv": {"folds": 5}, "candidates": cands,
              "task": {"classes": ["x", "y"]}, "test": {}}
    spec = ModelSpec(kind="bag", candidate="bag/b/lp_ft", modality="text", classes=["x", "y"])
    won = render_card({**report, "chosen": "bag/b/lp_ft", "choice": [{**choice, "chosen": "bag/b/lp_ft"}]}, spec, [])
    assert ("Under the time limit it ran on 1 of the 5 folds only; on those folds' rows its cross-validated accuracy "
            "(0.9000) beat that of b/linear_probe (0.8500), the best candidate scored on every fold.") in won
    lost = render_card({**report, "chosen": "b/linear_probe", "choice": [{**choice, "chosen": "b/linear_probe"}]},
                       spec.model_copy(update={"kind": "probe", "candidate": "b/linear_probe"}), [])
    assert "Under the time limit" not in lost and "It has the best cross-validated accuracy" in lost


def test_a_bag_without_its_refit_runs_each_next_fold_that_fits(monkeypatch):
    # fold fits of 100 s and 250 s of work: after fold 1 the two left (200 s) no longer fit in
    # 150 s, but the next one does; the bag keeps 2 of 3 folds instead of 1
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold

    import transfuse.adapt.cross_fit as cf
    from transfuse.adapt.probe import ProbeStrategy
    from transfuse.budget import Budget, budgeted
    from transfuse.config import HeadConfig

    d = load_digits()
    X, y, X_test = d.data[:240], d.target[:240], d.data[240:300]
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    now = [1000.0]
    monkeypatch.setattr(cf.time, "time", lambda: now[0])

    class HundredSeconds(ProbeStrategy):
        def fit(self, *a, **kw):
            now[0] += 100.0
            return super().fit(*a, **kw)

    with budgeted(Budget(250, start=now[0], reserve=0, clock=lambda: now[0])):
        out = cf.cross_fit(HundredSeconds(HeadConfig(), X, X_test, y, 10), y, folds, 10, "accuracy", 0,
                           bag=True, refit=False)
    assert (out.folds_run, len(out.folds)) == (2, 2)
    assert out.refit_skipped == ("stopped at the time limit (fold 3 of 3 (about 100 s more needed, 50 s left)) "
                                 "after 2 of 3 folds")
