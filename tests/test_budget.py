"""The time limit (``fit --time-limit``): the clock, the planner's arithmetic, presets, and runs
that stop on time with a finished report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import cli, write_digits_folder

from transfuse.budget import Budget, TimeLimitReached, budgeted, check, process_start
from transfuse.config import validate_config
from transfuse.errors import UserError
from transfuse.pipeline.plan import SAFETY, Planner, finetune_seconds
from transfuse.train.finetune import StepCost


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_finetune_estimate_counts_every_fit_and_pass():
    # by hand: n=100, 5 folds -> 80 training rows per fold, 16 of them the inner validation part;
    # batch 10: per fold 7 steps x 2 epochs x 1 s = 14, inner validation 2 batches x (2 epochs +
    # sanity + final) x 0.5 s = 4, the outer fold 2 batches x 0.5 = 1, overhead 2 -> 21; 5 folds = 105;
    # refit 10 steps x 2 epochs = 20, test 2 batches x 0.5 = 1, overhead 2 -> 23; total 128
    assert finetune_seconds(1.0, 0.5, 10, 100, 20, 5, 0.2, 2) == pytest.approx(128.0)
    # no inner split (a fixed schedule): per fold 8 steps x 2 + 1 + 2 = 19; 5 x 19 + 23 = 118
    assert finetune_seconds(1.0, 0.5, 10, 100, 20, 5, 0.0, 2) == pytest.approx(118.0)


def test_planner_keeps_the_most_epochs_that_fit_and_says_why():
    cost = StepCost(train_step=1.0, infer_batch=0.5, batch_size=10)
    # estimate(e) = 50 e + 28 (see above), times the safety factor
    assert SAFETY * (50 * 2 + 28) < 190 < SAFETY * (50 * 3 + 28)
    p = Planner(Budget(200, start=0.0, reserve=10, clock=Clock()))
    assert p.plan_finetune("bb/lp_ft", cost, 100, 20, 5, 0.2, max_epochs=10) == (2, True, 5)
    d = p.decisions[-1]
    assert (d["action"], d["epochs"], d["estimate_s"], d["refit"]) == ("run", 2, round(SAFETY * 128, 1), True)
    assert d["reason"] == f"2 epoch(s): about {SAFETY * 128:.0f} s of 190 s left (10 would need about " \
                          f"{SAFETY * 528:.0f} s)"
    assert p.plan_finetune("bb/lp_ft", cost, 100, 20, 5, 0.2, max_epochs=10, reserve=40) == (1, True, 5)
    assert p.plan_finetune("bb/lp_ft", cost, 100, 20, 5, 0.2, max_epochs=1) == (1, True, 5)
    assert p.decisions[-1]["reason"].endswith("(as configured)")
    assert p.plan_finetune("bb/finetune", cost, 100, 20, 5, 0.2, max_epochs=10, reserve=100) is None
    assert p.decisions[-1]["reason"] == f"needs about {SAFETY * 78:.0f} s for 1 epoch (5 folds + refit), 90 s left"
    assert Planner(None).plan_finetune("x", cost, 100, 20, 5, 0.2, max_epochs=7) == (7, True, 5)  # no limit


def test_with_fold_bags_the_planner_drops_the_refit_before_the_candidate():
    """``adapt.bag``: the folds also predict the test part; the refit is kept where 2 epochs fit
    with it and dropping it fits no more, or 1 where no plan fits 2; otherwise the most epochs that
    fit without it run and the bag ships instead; then the first folds only; a skip then counts one
    fold."""
    cost = StepCost(train_step=1.0, infer_batch=0.5, batch_size=10)
    # by hand (as above), 1 epoch: per fold 7 steps + inner validation 2 x 3 x 0.5 = 3 + outer fold 1
    # + overhead 2 + the test part 2 x 0.5 = 1 -> 14, 5 folds = 70; refit 10 + 1 + 2 = 13 -> 83
    assert finetune_seconds(1.0, 0.5, 10, 100, 20, 5, 0.2, 1, refit=False, bag=True) == pytest.approx(70.0)
    assert finetune_seconds(1.0, 0.5, 10, 100, 20, 5, 0.2, 1, bag=True) == pytest.approx(83.0)
    # 2 epochs: per fold 14 + 4 + 1 + 2 + 1 = 22 -> 110 without the refit
    assert finetune_seconds(1.0, 0.5, 10, 100, 20, 5, 0.2, 2, refit=False, bag=True) == pytest.approx(110.0)
    p = Planner(Budget(200, start=0.0, reserve=10, clock=Clock()))

    def plan(avail: float):
        return p.plan_finetune("bb/lp_ft", cost, 100, 20, 5, 0.2, max_epochs=10, reserve=190 - avail, bag=True)

    # 1 epoch with the refit (83 s) fits, 2 epochs without it (110 s) too: the 2 epochs run
    assert plan(SAFETY * 110 + 1) == (2, False, 5)
    assert p.decisions[-1]["reason"] == (
        f"2 epoch(s) without the refit: about {SAFETY * 110:.0f} s of {SAFETY * 110 + 1:.0f} s left (with the "
        "refit only 1 epoch(s) fit; fewer than 2 are planned only where no plan fits more); the fold bag ships instead")
    # e epochs: per fold 7e + 0.5 x 2 x (e + 2) + 1 + 2 + 1 = 8e + 6, 5 folds 40e + 30; refit 10e + 3
    assert finetune_seconds(1.0, 0.5, 10, 100, 20, 5, 0.2, 3, refit=False, bag=True) == pytest.approx(150.0)
    assert finetune_seconds(1.0, 0.5, 10, 100, 20, 5, 0.2, 2, bag=True) == pytest.approx(133.0)
    assert plan(SAFETY * 133 + 1) == (2, True, 5)  # without the refit 3 epochs (150 s) do not fit either
    assert plan(SAFETY * 150 + 1) == (3, False, 5)  # the refit's time buys a third epoch on every fold
    assert p.decisions[-1]["reason"] == (
        f"3 epoch(s) without the refit: about {SAFETY * 150:.0f} s of {SAFETY * 150 + 1:.0f} s left (with the "
        "refit only 2 epoch(s) fit; the refit's time goes to epochs); the fold bag ships instead")
    assert plan(SAFETY * 75) == (2, False, 3)  # 1 epoch only on all 5 folds (70 s); 2 epochs on 3 (66 s)
    d = p.decisions[-1]
    assert (d["action"], d["epochs"], d["refit"], d["folds"], d["estimate_s"]) == \
        ("run", 2, False, 3, round(SAFETY * 66, 1))
    assert d["reason"] == (f"2 epoch(s) on 3 of 5 folds without the refit: about {SAFETY * 66:.0f} s of "
                           f"{SAFETY * 75:.0f} s left (on all 5 folds only 1 epoch(s) fit; fewer than 2 are planned "
                           "only where no plan fits more); scored on those folds' rows only, against the other "
                           "candidates on the same rows; the fold bag ships instead")
    with_max_1 = p.plan_finetune("bb/lp_ft", cost, 100, 20, 5, 0.2, max_epochs=1, reserve=190 - SAFETY * 75, bag=True)
    assert with_max_1 == (1, False, 5)  # between the folds' 70 s and 83 s with the refit
    d = p.decisions[-1]
    assert (d["action"], d["epochs"], d["refit"], d["estimate_s"]) == ("run", 1, False, round(SAFETY * 70, 1))
    assert d["reason"] == (f"1 epoch(s) without the refit: about {SAFETY * 70:.0f} s of {SAFETY * 75:.0f} s left "
                           f"(1 epoch with the refit would need about {SAFETY * 83:.0f} s); the fold bag ships instead")
    # one fold of e epochs is 7e steps + inner validation (e + 2) x 0.5 + outer fold 1 + overhead 2 +
    # test part 1 = 8e + 6 s: 2 folds of 2 epochs 44 s, 1 fold of 4 epochs 38 s
    assert finetune_seconds(1.0, 0.5, 10, 100, 20, 5, 0.2, 4, refit=False, bag=True, run_folds=1) == \
        pytest.approx(38.0)
    assert plan(SAFETY * 45) == (2, False, 2)  # the most folds at which 2 epochs fit
    assert plan(SAFETY * 40) == (4, False, 1)  # 2 folds of 2 epochs do not fit: 1 fold, the most epochs
    assert p.decisions[-1]["reason"] == (
        f"4 epoch(s) on 1 of 5 folds without the refit: about {SAFETY * 38:.0f} s of {SAFETY * 40:.0f} s left (1 epoch "
        f"on all 5 folds would need about {SAFETY * 70:.0f} s); scored on those folds' rows only, against the other "
        "candidates on the same rows; the fold bag ships instead")
    assert plan(SAFETY * 20) == (1, False, 1)  # no plan fits 2 epochs (1 fold: 22 s): 1 epoch on 1 fold
    assert plan(SAFETY * 13) is None
    assert p.decisions[-1]["reason"] == f"needs about {SAFETY * 14:.0f} s for 1 epoch (1 of 5 folds), " \
                                        f"{SAFETY * 13:.0f} s left"
    assert p.plan_finetune("bb/lp_ft", cost, 100, 20, 5, 0.2, max_epochs=10, reserve=190 - 60) is None  # no bag
    assert p.decisions[-1]["reason"] == f"needs about {SAFETY * 78:.0f} s for 1 epoch (5 folds + refit), 60 s left"


def test_a_step_is_extrapolated_from_two_row_counts():
    """Two timed steps (8 and 16 rows) give the line a 32-row step is read from: fixed costs
    counted once; never below the larger measurement, never above scaling it from zero."""
    from transfuse.train.finetune import _extrapolate

    assert _extrapolate(8, 1.0, 16, 1.5, 32) == pytest.approx(2.5)  # 0.5 fixed + 1/16 s per row
    assert _extrapolate(8, 1.0, 16, 0.9, 32) == pytest.approx(0.9)  # noise: no negative slope
    assert _extrapolate(8, 0.2, 16, 1.0, 32) == pytest.approx(2.0)  # capped at 1.0 x 32 / 16
    assert _extrapolate(8, 1.0, 8, 1.0, 32) == pytest.approx(4.0)  # one row count: scaled


def test_budget_deadline_reserve_and_projection():
    clock = Clock(1000.0)
    b = Budget(60, start=1000.0, clock=clock)
    assert b.reserve == 3.0 and b.left() == 57.0  # 5 % of the limit, at least 2 s
    assert Budget(10, start=0.0, clock=clock).reserve == 2.0
    clock.t = 1050.0
    b.check("x")
    # 10 of 110 items in 5 s: 50 s more at this pace, 7 s left -> stop now, not at the deadline
    with pytest.raises(TimeLimitReached) as e:
        b.check_projection("embed", 10, 110, 1045.0)
    assert str(e.value) == "embed (about 50 s more needed, 7 s left): stopped at the time limit (60 s)"
    b.check_projection("embed", 100, 110, 1045.0)  # 0.5 s more: fine
    clock.t = 1057.5
    with pytest.raises(TimeLimitReached, match=r"^fold: stopped at the time limit \(60 s\)$"):
        b.check("fold")
    assert not b.over()  # past the work deadline, within the limit
    clock.t = 1060.0
    assert b.over()


def test_check_is_a_no_op_without_an_active_budget():
    check("anything")
    clock = Clock(100.0)
    with budgeted(Budget(1, start=0.0, clock=clock)):
        with pytest.raises(TimeLimitReached):
            check("late")
    check("after the block")


def test_process_start_is_before_the_first_statement():
    t = process_start()
    assert time.time() - 600 < t <= time.time()


def test_presets_list_the_strategies_unless_the_config_does():
    base = {"backbones": ["bundled:minilm_l6"], "data": {"modality": "text"}}
    assert validate_config({**base, "budget": {"time_limit": 60}}).adapt.strategies == ["linear_probe", "lp_ft"]
    assert validate_config({**base, "budget": {"preset": "fast"}}).adapt.strategies == ["linear_probe"]
    assert validate_config({**base, "budget": {"preset": "best"}}).adapt.strategies == \
        ["linear_probe", "lp_ft", "finetune"]
    assert validate_config({**base, "budget": {"preset": "best"},
                            "adapt": {"strategies": ["finetune"]}}).adapt.strategies == ["finetune"]
    assert validate_config(base).adapt.strategies == ["linear_probe"]
    # an image run's presets add the multilayer probe (one more head on the same embedding)
    image = {"backbones": ["bundled:efficientnet_lite0"], "data": {"modality": "image"}}
    assert validate_config({**image, "budget": {"time_limit": 60}}).adapt.strategies == \
        ["linear_probe", "multilayer_probe", "lp_ft"]
    assert validate_config({**image, "budget": {"preset": "fast"}}).adapt.strategies == \
        ["linear_probe", "multilayer_probe"]
    assert validate_config(image).adapt.strategies == ["linear_probe"]
    # ... and its extra input sizes, unless the config gives them; never on text or without a preset
    assert validate_config({**image, "budget": {"preset": "fast"}}).adapt.scales == [0.57, 1.43]
    assert validate_config({**image, "budget": {"time_limit": 60}, "adapt": {"scales": []}}).adapt.scales == []
    assert validate_config(image).adapt.scales == []
    assert validate_config({**base, "budget": {"preset": "fast"}}).adapt.scales == []
    # under a time limit its fine-tunes train at 112 px on all their rows at lr 3e-4, each unless given
    ft = validate_config({**image, "budget": {"time_limit": 60}}).train.finetune
    assert (ft.image_size, ft.lr, ft.inner_val) == (112, 3e-4, 0.0)
    ft = validate_config({**image, "budget": {"time_limit": 60},
                          "train": {"finetune": {"lr": 1e-4, "image_size": None}}}).train.finetune
    assert (ft.image_size, ft.lr, ft.inner_val) == (None, 1e-4, 0.0)
    for cfg in (image, {**image, "budget": {"preset": "medium"}}, {**base, "budget": {"time_limit": 60}}):
        ft = validate_config(cfg).train.finetune
        assert (ft.image_size, ft.lr, ft.inner_val) == (None, 1e-4, 0.2)
    for bad in ([1.0], [0.5, 0.5], [0.1], [5]):
        with pytest.raises(UserError, match=r"adapt.scales.*give distinct multiples of the image size from 0.15 "
                                            r"to 4, other than 1, e.g. \[0.57, 1.43\]"):
            validate_config({**image, "adapt": {"scales": bad}})


def test_bad_budget_values_are_one_line_errors():
    p = cli("fit", "--data", "emoji", "--out", "/tmp/never", "--preset", "fastest", check=False)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "budget.preset" in err[0] and "'fast', 'medium' or 'best'" in err[0], err
    p = cli("fit", "--data", "emoji", "--out", "/tmp/never", "--time-limit", "0", check=False)
    assert p.returncode == 2 and "budget.time_limit" in p.stderr and "greater than 0" in p.stderr, p.stderr


@pytest.mark.real
def test_a_fine_tune_stopped_by_the_deadline_is_left_out_and_the_run_finishes(tmp_path: Path, monkeypatch):
    """The planner lets LP-FT start (its measured step is made tiny: 200 epochs planned in about
    8 s of fixed costs); 12 s later the deadline stops it mid-fit (200 epochs take minutes): the run still ends with the probe chosen, a report and a served model,
    and the stopped candidate is listed with the reason, its work folder removed."""
    import transfuse.train.finetune as ft
    from transfuse.budget import active_budget
    from transfuse.pipeline import run_experiment

    real = ft.measure_step

    def tiny(*a, **k):
        real(*a, **k)
        b = active_budget()
        b.start -= b.left() - 12.0  # from now on, 12 s of work are left
        return StepCost(1e-4, 1e-4, 8)

    monkeypatch.setattr(ft, "measure_step", tiny)
    data = write_digits_folder(tmp_path / "digits", per_class=10)
    cfg = validate_config({
        "name": "budget", "data": {"source": "folder", "path": str(data), "modality": "image"},
        "split": {"folds": 2}, "preprocess": {"image_size": 64}, "backbones": ["bundled:efficientnet_lite0"],
        "adapt": {"baseline": False, "strategies": ["linear_probe", "lp_ft"]},
        "budget": {"time_limit": 3600, "preset": "medium"},
        "fuse": {"enabled": False},
        "train": {"finetune": {"epochs": 200, "batch_size": 4, "patience": None, "num_workers": 0}},
        "output": {"dir": str(tmp_path / "run")}})
    rep = run_experiment(cfg, progress=False)
    assert [c["name"] for c in rep["candidates"]] == ["efficientnet_lite0/linear_probe"]
    assert rep["chosen"] == "efficientnet_lite0/linear_probe"
    assert rep["skipped"] == [{"name": "efficientnet_lite0/lp_ft",
                               "reason": "stopped at the time limit (fine-tuning)"}]
    plan = rep["plan"]
    assert plan["time_limit"] == 3600 and plan["preset"] == "medium"
    assert [(d["name"], d["action"]) for d in plan["decisions"]] == [
        ("efficientnet_lite0/lp_ft", "run"), ("efficientnet_lite0/lp_ft", "stopped")]
    run = tmp_path / "run"
    assert json.loads((run / "report.json").read_text())["plan"] == plan
    assert (run / "model" / "model.json").is_file()
    assert not (run / "work" / "efficientnet_lite0_lp_ft").exists()
    assert "time limit" in (run / "report.html").read_text()


@pytest.mark.real
def test_fit_with_a_time_limit_ends_on_time_with_a_report(tmp_path: Path):
    """The whole command, start-up included, ends within the limit (+10 %). On an idle 2-core
    machine the probes and the pixel baseline finish (about 20 s) and fine-tuning is planned from its
    measured step; on a machine so loaded that nothing finishes, the command still ends on time with
    the one-line time-limit error and exit code 2 (both outcomes are checked for their content)."""
    data = write_digits_folder(tmp_path / "digits", per_class=12)
    limit = 60.0
    t = time.time()
    p = cli("fit", "--data", str(data), "--out", str(tmp_path / "run"), "--time-limit", str(limit),
            "--folds", "3", "--quiet", check=False)
    wall = time.time() - t
    assert wall <= 1.1 * limit, (wall, p.stderr[-2000:])
    if p.returncode != 0:
        last = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 2 and last.startswith("error: budget.time_limit 60 s: no candidate finished in time ("), \
            p.stderr[-2000:]
        assert "Traceback" not in p.stderr
        return
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    names = [c["name"] for c in rep["candidates"]]
    assert "efficientnet_lite0/linear_probe" in names and "pixels" in names
    lp_ft = [d for d in rep["plan"]["decisions"] if d["name"] == "efficientnet_lite0/lp_ft"]
    assert lp_ft and lp_ft[0]["action"] in ("run", "skip") and lp_ft[0]["train_step_s"] > 0
    if lp_ft[0]["action"] == "skip":
        assert {"name": "efficientnet_lite0/lp_ft", "reason": "time limit: " + lp_ft[0]["reason"]} in rep["skipped"]
    assert rep["plan"]["work_seconds"] <= limit
    assert (tmp_path / "run" / "model" / "model.json").is_file()


def test_no_step_is_measured_when_not_even_the_fixed_costs_fit():
    clock = Clock()
    p = Planner(Budget(100, start=0.0, reserve=5, clock=clock))
    assert p.too_late("bb/lp_ft", 3, reserve=0) is False  # 95 s left, 10 s needed
    clock.t = 90.0
    assert p.too_late("bb/lp_ft", 3, reserve=0) is True
    assert p.decisions == [{"name": "bb/lp_ft", "action": "skip",
                            "reason": f"needs at least {SAFETY * 2.0 * 4:.0f} s (3 folds + refit), 5 s left"}]
    # with fold bags one fold is the least that can run: one fit's fixed costs (2.5 s) fit in 5 s
    assert p.too_late("bb/lp_ft", 3, reserve=0, bag=True) is False
    assert p.too_late("bb/lp_ft", 3, reserve=3, bag=True) is True
    assert p.decisions[-1]["reason"] == f"needs at least {SAFETY * 2.0:.0f} s (1 of 3 folds), 2 s left"


@pytest.mark.real
def test_a_backbone_whose_embedding_is_stopped_runs_none_of_its_strategies(tmp_path: Path, monkeypatch):
    """Embedding stopped by the time limit (its measured pace could not finish): the probe is
    stopped, LP-FT of the same backbone is not started (no fit of it could finish either), and the
    run still finishes with the pixel baseline."""
    from transfuse.pipeline import run_experiment
    from transfuse.train.cache import FeatureCache

    def stopped(self, backbone, *a, **k):
        raise TimeLimitReached(f"embed {backbone.spec} (about 500 s more needed, 40 s left)", 3600)

    monkeypatch.setattr(FeatureCache, "embed", stopped)
    data = write_digits_folder(tmp_path / "digits", per_class=10)
    cfg = validate_config({
        "name": "budget", "data": {"source": "folder", "path": str(data), "modality": "image"},
        "split": {"folds": 2}, "preprocess": {"image_size": 32}, "backbones": ["bundled:efficientnet_lite0"],
        "budget": {"time_limit": 3600}, "output": {"dir": str(tmp_path / "run")}})
    rep = run_experiment(cfg, progress=False)
    assert [c["name"] for c in rep["candidates"]] == ["pixels"] and rep["chosen"] == "pixels"
    assert rep["skipped"] == [
        {"name": "efficientnet_lite0/linear_probe", "reason": "stopped at the time limit (embed "
         "bundled:efficientnet_lite0 (about 500 s more needed, 40 s left))"},
        *({"name": f"efficientnet_lite0/{s}",
           "reason": "not started: embedding with bundled:efficientnet_lite0 was stopped at the time limit"}
          for s in ("multilayer_probe", "lp_ft"))]


def test_the_fusion_reserve_counts_the_probes_fits_without_their_embedding():
    from transfuse.pipeline.singles import fusion_reserve

    cfg = validate_config({"backbones": ["bundled:minilm_l6", "bundled:minilm_l3", "tfidf"],
                           "data": {"modality": "text"}})
    timings = {"embed:minilm_l6": 80.0, "candidate:minilm_l6/linear_probe": 84.0,
               "embed:minilm_l3": 30.0, "candidate:minilm_l3/linear_probe": 32.0, "candidate:tfidf": 9.0}
    assert fusion_reserve(cfg, timings) == pytest.approx(1.5 * (4.0 + 2.0) + 0.5 * 4)
    assert fusion_reserve(cfg, {}) == 2.0
    off = validate_config({"backbones": ["bundled:minilm_l6"], "fuse": {"enabled": False}})
    assert fusion_reserve(off, timings) == 0.0


class _PacedCache:
    """A feature cache whose embedding takes ``pace`` seconds per item on a fake clock."""

    def __init__(self, clock: Clock, pace: float):
        self.clock, self.pace, self.embedded = clock, pace, []

    def missing(self, backbone, dataset) -> int:
        return len(dataset)

    def embed(self, backbone, dataset, batch_size=64, progress=False):
        self.clock.t += self.pace * len(dataset)
        self.embedded.append(len(dataset))


class _Sized:
    modality, spec = "image", "fake"

    def __init__(self, size: int):
        self.size = size

    def preprocess_config(self):
        return {"input_size": [3, self.size, self.size]}


class _Tappable(_Sized):
    scales = ()

    def tapped(self, taps, scales=()):
        raise AssertionError("the planner only prices the view")


@pytest.mark.parametrize("limit, keep", [(1000, True), (200, False)])
def test_the_multiscale_view_goes_before_the_image_size_shrinks(monkeypatch, limit, keep):
    """An image preset's ``adapt.scales`` [0.57, 1.43] at 224 px: 128 and 320 px beside 224, so
    embedding costs 1 + (128/224)^2 + (320/224)^2 = 3.367 times the 47.6 s measured at 224 px
    (160.3 s). 1,000 s: kept. 200 s (192.6 s left, half 96.3 s): the extra sizes go, and 224 px
    alone (47.6 s) fits, so the size stays."""
    import types

    from transfuse.data.base import Dataset
    from transfuse.pipeline.plan import multiscale_cost, plan_image_size

    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    items = [f"{i}.png" for i in range(1000)]
    train = Dataset("image", items[:800], [0, 1] * 400, ["a", "b"], items[:800])
    test = Dataset("image", items[800:], [0, 1] * 100, ["a", "b"], items[800:])
    cfg = validate_config({"backbones": ["bundled:efficientnet_lite0"], "data": {"modality": "image"},
                           "budget": {"preset": "fast"}})
    factor = 1 + (128 / 224) ** 2 + (320 / 224) ** 2
    assert multiscale_cost(cfg, _Tappable(224)) == pytest.approx(factor)
    assert multiscale_cost(cfg, _Sized(224)) == 1.0  # no stage features: no multi-layer view
    own = _Tappable(224)
    own.scales = (96,)
    assert multiscale_cost(cfg, own) == 1.0  # its own scales are in the measured pace already
    planner = Planner(Budget(limit, start=0.0, reserve=5, clock=clock))
    new, _ = plan_image_size(cfg, types.SimpleNamespace(train=train, test=test), planner, _PacedCache(clock, 0.05),
                             lambda b, c: (_Tappable(224), {}))
    seconds, left = 0.05 * (1000 - 48), limit - 5 - 0.05 * 48
    scales, size = planner.decisions
    what = (f"multilayer_probe's embedding at 128, 320 and 224 px would take about {seconds * factor:.0f} s of "
            f"{left:.0f} s left")
    assert (scales["name"], size["name"], size["image_size"]) == ("adapt.scales", "preprocess.image_size", 224)
    if keep:
        assert (scales["action"], scales["reason"], new.adapt.scales) == ("keep", what, [0.57, 1.43])
        assert size["reason"] == f"224 px: embedding takes about {seconds * factor:.0f} s of {left:.0f} s left"
    else:
        assert (scales["action"], new.adapt.scales) == ("drop", [])
        assert scales["reason"] == f"{what} (at most 50% for embedding); it embeds at 224 px only, about {seconds:.0f} s"
        assert size["reason"] == f"224 px: embedding takes about {seconds:.0f} s of {left:.0f} s left"


@pytest.mark.parametrize("limit, want", [(1000, 224), (100, 192), (60, 160), (30, 96), (20, 96)])
def test_the_image_size_shrinks_until_embedding_fits_half_the_time_left(monkeypatch, limit, want):
    """1,000 items at 0.05 s each, 48 of them measured: about 47.6 s more at 224 px, the forward
    cost taken as proportional to the pixels. 60 s limit, 5 s reserve, 2.4 s measuring: 52.6 s
    left, half of it 26.3 s: 192 px would take 35.0 s, 160 px 24.3 s -> 160. At 20 s not even
    96 px fits: the smallest size is kept and the embedding's own projection decides."""
    import types

    from transfuse.data.base import Dataset
    from transfuse.pipeline.plan import EMBED_SHARE, FALLBACK_SIZES, plan_image_size

    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    cache = _PacedCache(clock, 0.05)
    items = [f"{i}.png" for i in range(1000)]
    train = Dataset("image", items[:800], [0, 1] * 400, ["a", "b"], items[:800])
    test = Dataset("image", items[800:], [0, 1] * 100, ["a", "b"], items[800:])
    cfg = validate_config({"backbones": ["bundled:efficientnet_lite0", "pixels"],
                           "data": {"modality": "image"}})
    built = []
    planner = Planner(Budget(limit, start=0.0, reserve=5, clock=clock))
    new, loaded = plan_image_size(cfg, types.SimpleNamespace(train=train, test=test), planner, cache,
                                  lambda b, c: built.append(b.name) or (_Sized(224), {}))
    assert built == ["bundled:efficientnet_lite0"] and cache.embedded == [16, 32]  # warm-up, then the pace
    left = limit - 5 - 0.05 * 48
    seconds = 0.05 * (1000 - 48)  # the measured items are cached
    d = planner.decisions[-1]
    assert d["image_size"] == want and (new.preprocess.image_size or 224) == want
    if want == 224:
        assert loaded and d["reason"] == f"224 px: embedding takes about {seconds:.0f} s of {left:.0f} s left"
        return
    assert not loaded  # built at the size that was not kept
    fitting = [s for s in FALLBACK_SIZES if seconds * (s / 224) ** 2 <= EMBED_SHARE * left]
    assert want == (fitting[0] if fitting else FALLBACK_SIZES[-1])
    assert d["reason"] == (f"224 -> {want} px: embedding at 224 px would take about {seconds:.0f} s of "
                           f"{left:.0f} s left (at most 50% for it); at {want} px about "
                           f"{seconds * (want / 224) ** 2:.0f} s")
