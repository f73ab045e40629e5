"""Hyperparameter search: samplers from a config, resume after a kill, workers sharing a storage,
bad search spaces. Heads are searched on real features: sklearn's handwritten digits (64 pixels)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from transfuse.config import HeadConfig, validate_config
from transfuse.errors import UserError
from transfuse.evaluate.search import (
    finished_count,
    head_objective,
    make_sampler,
    make_storage,
    open_study,
    run_study,
    summarize,
)
from transfuse.evaluate.search_config import SearchConfig

SRC = str(Path(__file__).resolve().parents[1] / "src")

# a worker process: digits features, 3 folds, a study in a shared sqlite file
WORKER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold
    from transfuse.config import HeadConfig
    from transfuse.evaluate import search as S
    from transfuse.evaluate.search_config import SearchConfig
    url, n, sampler, worker, slow = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", float(sys.argv[5])
    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    sc = SearchConfig(sampler=sampler, heartbeat_s=1, pruner="none")
    obj = S.head_objective(X, y, folds, HeadConfig(max_iter=30), sc.space, "accuracy", 0)
    def slow_obj(trial):
        time.sleep(slow)
        return obj(trial)
    storage, deadline = S.make_storage(url, sc.heartbeat_s), time.monotonic() + 60
    while True:  # a worker started together with the first process waits for its study
        try:
            study = S.open_study(storage, "s", S.make_sampler(sampler, sc.space, 0), "none", worker)
            break
        except S.UserError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    print(S.run_study(study, slow_obj, n), flush=True)
""")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold

    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    return X, y, list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))


def _study(tmp_path: Path | None, sc: SearchConfig, name: str = "s", seed: int = 0):
    st = make_storage(f"sqlite:///{tmp_path / 'search.db'}", sc.heartbeat_s) if tmp_path else None
    return open_study(st, name, make_sampler(sc.sampler, sc.space, seed, sc.grid_points), sc.pruner, False)


def _search(tmp_path: Path | None, digits, sc: SearchConfig, n: int, name: str = "s"):
    X, y, folds = digits
    study = _study(tmp_path, sc, name)
    run_study(study, head_objective(X, y, folds, HeadConfig(max_iter=30), sc.space, "accuracy", 0), n)
    return study


def _cfg(**search) -> SearchConfig:
    return validate_config({"backbones": ["bundled:efficientnet_lite0"], "search": search}).search


def test_grid_search_visits_every_grid_point_once(tmp_path, digits):
    sc = _cfg(sampler="grid", pruner="none", grid_points=3,
              space={"weight_decay": {"low": 1e-3, "high": 10, "log": True},
                     "class_weight": {"choices": ["none", "balanced"]}})
    study = _search(tmp_path, digits, sc, n=6)
    seen = sorted((round(t.params["weight_decay"], 6), t.params["class_weight"]) for t in study.trials)
    assert seen == sorted((round(w, 6), c) for w in (1e-3, 0.1, 10.0) for c in ("none", "balanced"))
    s = summarize(study, "heads")
    assert s["n_complete"] == 6 and s["best_value"] == max(t.value for t in study.trials)
    # every trial recorded its three fold scores; the objective is their mean
    assert all(len(r["fold_scores"]) == 3 and abs(np.mean(r["fold_scores"]) - r["value"]) < 1e-12
               for r in s["trials"])


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_random_and_tpe_run_from_config_and_are_seeded(tmp_path, digits, sampler):
    sc = _cfg(sampler=sampler, pruner="median")
    a, b = (_search(None, digits, sc, n=12) for _ in range(2))  # in memory: same seed, same trials
    assert finished_count(a) == finished_count(b) == 12
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert len({str(t.params) for t in a.trials}) == 12
    s = summarize(a, "heads")
    assert s["best_params"] is not None and set(s["best_params"]) == {"weight_decay", "label_smoothing",
                                                                      "class_weight"}


def test_pruned_trials_report_per_fold_values(tmp_path, digits):
    # 2 startup trials then a median rule: a trial far below the median stops after its first fold
    sc = _cfg(sampler="grid", pruner="median", space={"weight_decay": {"choices": [1e-3] * 1 + [1e4]}})
    study = _search(tmp_path, digits, sc, n=2)
    assert finished_count(study) == 2
    for t in study.trials:
        assert sorted(t.intermediate_values) == list(range(len(t.user_attrs["fold_scores"])))


def _worker(url: str, n: int, sampler: str, worker: bool, slow: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", WORKER, url, str(n), sampler, "1" if worker else "0", str(slow)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_workers_share_one_storage_without_losing_or_duplicating(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    # started together (the imports take seconds): the first creates the study, the second joins it
    first = _worker(url, 12, "random", worker=False, slow=0.2)
    second = _worker(url, 12, "random", worker=True, slow=0.2)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    ran = [int(o[0].strip().splitlines()[-1]) for o in outs]
    import optuna

    study = optuna.load_study(study_name="s", storage=url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 12 == sum(ran)
    assert min(ran) >= 1  # both did work
    assert len({t.number for t in finished}) == 12
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]


def test_worker_without_a_study_is_a_one_line_error(tmp_path):
    st = make_storage(f"sqlite:///{tmp_path / 'none.db'}", 10)
    with pytest.raises(UserError, match="no study 'x' in the search storage; start it first"):
        open_study(st, "x", make_sampler("random", {}, 0), "none", worker=True)


def test_killed_search_resumes_to_exactly_n_trials(tmp_path, digits):
    import optuna

    url = f"sqlite:///{tmp_path / 'kill.db'}"
    p = _worker(url, 14, "tpe", worker=False, slow=0.3)
    st = make_storage(url, 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if finished_count(optuna.load_study(study_name="s", storage=st)) >= 3:
                break
        except KeyError:
            pass
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = optuna.load_study(study_name="s", storage=st)
    done_before = {t.number: t.params for t in before.trials if t.state.name == "COMPLETE"}
    assert 3 <= len(done_before) < 14
    # no sleep: run_study waits for the killed trial to go stale (2 heartbeats), fails and retries it
    X, y, folds = digits
    sc = SearchConfig(sampler="tpe", heartbeat_s=1, pruner="none")
    study = open_study(st, "s", make_sampler("tpe", sc.space, 0), "none", worker=False)
    run_study(study, head_objective(X, y, folds, HeadConfig(max_iter=30), sc.space, "accuracy", 0), 14)
    after = optuna.load_study(study_name="s", storage=st).trials
    assert finished_count(study) == 14
    assert {t.number: t.params for t in after if t.number in done_before} == done_before
    assert not [t for t in after if t.state.name == "RUNNING"]


def test_trial_orphaned_before_its_first_heartbeat_is_retried(tmp_path, digits):
    # a worker killed between creating its trial and the first heartbeat leaves a RUNNING trial that
    # optuna never fails (the killed-search flake); run_study waits, fails it and retries it
    import optuna

    sc = SearchConfig(sampler="random", heartbeat_s=1, pruner="none")
    st = make_storage(f"sqlite:///{tmp_path / 'orphan.db'}", sc.heartbeat_s)
    study = open_study(st, "s", make_sampler("random", sc.space, 0), "none", worker=False)
    with pytest.warns(UserWarning, match="Heartbeat"):
        orphan = study.ask()  # RUNNING, no heartbeat, its process "gone"
    X, y, folds = digits
    t0 = time.monotonic()
    assert run_study(study, head_objective(X, y, folds, HeadConfig(max_iter=30), sc.space, "accuracy", 0), 3) == 3
    trials = optuna.load_study(study_name="s", storage=st).trials
    assert [t.state.name for t in trials].count("COMPLETE") == 3 == finished_count(study)
    assert trials[orphan.number].state.name == "FAIL" and time.monotonic() - t0 >= 2.0  # after the grace period
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]  # set by the retry
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"


def test_sqlite_storage_commits_without_waiting_for_the_disk(tmp_path):
    st = make_storage(f"sqlite:///{tmp_path / 'wal.db'}", 10)
    with st.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_fast_heads_score_like_the_pipelines_heads(digits):
    # the fast path (float32, one prepared problem per fold, warm starts) against a HeadClassifier
    # per fold, on the same trials: the same CV accuracy up to one digit in 300
    import optuna

    X, y, folds = digits
    sc = SearchConfig()
    fast = head_objective(X, y, folds, HeadConfig(), sc.space, "accuracy", 0)
    exact = head_objective(X, y, folds, HeadConfig(), sc.space, "accuracy", 0, fast=False)
    for wd, ls, cw in [(1e-3, 0.0, "none"), (0.05, 0.1, "balanced"), (0.8, 0.02, "none"), (3.0, 0.15, "balanced")]:
        params = {"weight_decay": wd, "label_smoothing": ls, "class_weight": cw}
        a, b = (f(optuna.trial.FixedTrial(params)) for f in (fast, exact))
        assert abs(a - b) <= 1 / 300 + 1e-12, (params, a, b)


@pytest.mark.parametrize("space, message", [
    ({"weight_decay": {"low": 1.0, "high": 0.1}}, "low (1) > high (0.1); swap them"),
    ({"weight_decay": {"low": 0.0, "high": 1.0, "log": True}}, "a log range must be > 0 but low is 0"),
    ({"weight_decay": {"low": 0.0}}, "give 'low' and 'high'"),
    ({"wieght_decay": {"low": 0.1, "high": 1.0}}, "unknown head parameter 'wieght_decay'; did you mean 'weight_decay'"),
])
def test_bad_search_spaces_are_one_line_errors(space, message):
    with pytest.raises(UserError) as e:
        _cfg(space=space)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "search.space" in str(e.value)


def test_unknown_finetune_parameter():
    with pytest.raises(UserError, match="unknown fine-tuning parameter 'lrr'; did you mean 'lr'"):
        _cfg(finetune_space={"lrr": {"low": 1e-5, "high": 1e-3}})


@pytest.mark.real
def test_fit_with_search_applies_the_best_head_and_reports_it(tmp_path, digits_folder):
    import json

    import yaml

    from transfuse.evaluate.search import fit_with_search

    cfg = validate_config({"name": "s", "data": {"source": "folder", "path": str(digits_folder)},
                           "split": {"folds": 3, "test_size": 0.25}, "preprocess": {"image_size": 32},
                           "backbones": ["bundled:efficientnet_lite0"],
                           "search": {"sampler": "random", "pruner": "none"}})
    report = fit_with_search(cfg, tmp_path / "run", n_trials=8, progress=False)
    res = json.loads((tmp_path / "run" / "search" / "search.json").read_text())
    assert res["stages"][0]["n_complete"] == 8
    best = max(res["stages"][0]["trials"], key=lambda r: r["value"])
    assert report["search"]["best_head"] == best["params"] == res["best_head"]
    head = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["head"]
    assert {k: head[k] for k in best["params"]} == best["params"]
    # the pipeline's CV of the chosen head is the search's best trial (same folds; the search's
    # float32 fits may differ by a validation sample)
    assert report["candidates"][0]["cv_mean"] == pytest.approx(best["value"], abs=0.05)
    html = (tmp_path / "run" / "search" / "search.html").read_text()
    assert "optimisation history" in html or "data:image/png" in html
