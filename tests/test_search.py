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

from transfuse.config import HeadConfig, SearchConfig, validate_config
from transfuse.errors import UserError
from transfuse.search.objectives import head_objective
from transfuse.search.study import (
    finished_count,
    make_sampler,
    make_storage,
    open_study,
    run_study,
    summarize,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")

# a worker process: digits features, 3 folds, a study in a shared sqlite file
WORKER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold
    from transfuse.config import HeadConfig, SearchConfig
    from transfuse.errors import UserError
    from transfuse.search import study as S
    from transfuse.search.objectives import head_objective
    url, n, sampler, worker, slow = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", float(sys.argv[5])
    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    sc = SearchConfig(sampler=sampler, heartbeat_s=1, pruner="none")
    obj = head_objective(X, y, folds, HeadConfig(max_iter=30), sc.space, "accuracy", 0)
    def slow_obj(trial):
        time.sleep(slow)
        return obj(trial)
    storage, deadline = S.make_storage(url, sc.heartbeat_s), time.monotonic() + 60
    while True:  # a worker started together with the first process waits for its study
        try:
            study = S.open_study(storage, "s", S.make_sampler(sampler, sc.space, 0), "none", worker)
            break
        except UserError:
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


def test_sqlite_file_is_in_wal_mode_before_a_writer_could_block_the_switch(tmp_path):
    # switching a file to WAL fails at once while another connection writes, whatever the busy
    # timeout; made on a worker's first connection, the switch crashed it (the two-worker flake)
    import sqlite3
    import threading

    db = tmp_path / "busy.db"
    st = make_storage(f"sqlite:///{db}", 10)
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.execute("BEGIN IMMEDIATE")  # another worker writing
    threading.Timer(1.0, other.execute, ("ROLLBACK",)).start()
    t0 = time.monotonic()
    study = open_study(st, "s", make_sampler("random", {}, 0), "none", worker=False)
    assert time.monotonic() - t0 >= 0.9 and study.study_name == "s"  # it waited for the writer
    other.close()


def test_workers_set_up_a_new_storage_one_at_a_time(tmp_path):
    import threading

    from filelock import FileLock

    db, done = tmp_path / "new.db", []
    with FileLock(f"{db}.lock"):  # another worker creating the tables
        t = threading.Thread(target=lambda: done.append(make_storage(f"sqlite:///{db}", 10)))
        t.start()
        t.join(1.0)
        assert not done and not db.exists()
    t.join(30)
    assert len(done) == 1 and db.exists()


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

    from transfuse.pipeline.search import fit_with_search

    cfg = validate_config({"name": "s", "data": {"source": "folder", "path": str(digits_folder)},
                           "split": {"folds": 3, "test_size": 0.25}, "preprocess": {"image_size": 32},
                           "backbones": ["bundled:efficientnet_lite0"], "adapt": {"baseline": False},
                           "search": {"sampler": "random", "pruner": "none"}})
    report = fit_with_search(cfg, tmp_path / "run", n_trials=8, progress=False)
    res = json.loads((tmp_path / "run" / "search" / "search.json").read_text())
    assert res["stages"][0]["n_complete"] == 8
    best = max(res["stages"][0]["trials"], key=lambda r: r["value"])
    assert report["search"]["best_head"] == best["params"] == res["best_head"]
    head = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["head"]
    assert {k: head[k] for k in best["params"]} == best["params"]
    # the searched probe's CV is nested: each outer fold chose its own head by a search inside its
    # training rows (a full set of parameters per fold); what ships uses the full search's best
    probe = report["candidates"][0]
    assert probe["name"] == "efficientnet_lite0/linear_probe"
    assert report["search"]["nested_candidates"] == [probe["name"]]
    assert report["search"]["cv"].startswith("nested: a search of 8 head trials inside each outer fold")
    assert [set(c) for c in probe["selected"]["folds"]] == [set(best["params"])] * 3
    assert probe["selected"]["final"] == best["params"]
    assert len(probe["cv_scores"]) == 3 and 0.0 <= probe["cv_mean"] <= 1.0
    html = (tmp_path / "run" / "search" / "search.html").read_text()
    assert "optimisation history" in html or "data:image/png" in html
    # an interrupted searched run resumes with its searched candidate still nested
    import shutil

    from transfuse.pipeline.resume import resume

    shutil.rmtree(tmp_path / "run" / "candidates" / "efficientnet_lite0_linear_probe")
    again = resume(tmp_path / "run", progress=False)
    assert again["search"]["nested_candidates"] == [probe["name"]]
    assert again["candidates"][0]["selected"] == probe["selected"]
    assert again["candidates"][0]["cv_scores"] == pytest.approx(probe["cv_scores"])


# ----------------------------------------------------------------------------- nested CV

def _nested_search(X, y, n_trials: int, final: dict, folds: int = 3):
    """The head stage of a search (random sampler, no pruner) ready to re-run inside each fold."""
    from transfuse.search.nested import HeadSearch, NestedSearch

    cfg = validate_config({"backbones": ["bundled:efficientnet_lite0"], "search": {"sampler": "random",
                                                                                  "pruner": "none"}})
    heads = HeadSearch(X, y, cfg.train.head, cfg.search, n_trials, "accuracy", folds, int(y.max()) + 1)
    return NestedSearch(cfg, heads, None, {"head": final, "finetune": {}})


def test_nested_cv_of_a_searched_probe_is_honest_on_random_labels():
    # labels independent of the features: any CV above chance is optimism. The best trial of a
    # plain search scored on the run's folds is the best of 30 noisy scores on those folds; the
    # nested CV (a search inside each outer fold's training rows) stays at chance.
    from sklearn.model_selection import StratifiedKFold

    from transfuse.adapt.cross_fit import cross_fit
    from transfuse.adapt.probe import ProbeStrategy
    from transfuse.search.study import best_trial

    sc, n_trials, n, n_classes = _cfg(sampler="random", pruner="none"), 30, 60, 3
    plain, nested = [], []
    for rep in range(4):
        rng = np.random.default_rng(rep)
        X, y = rng.normal(size=(n, 20)), rng.permutation(np.arange(n) % n_classes)
        folds = list(StratifiedKFold(3, shuffle=True, random_state=rep).split(X, y))
        study = _study(None, sc)
        run_study(study, head_objective(X, y, folds, HeadConfig(), sc.space, "accuracy", 0), n_trials)
        best = best_trial(study)
        search = _nested_search(X, y, n_trials, best.params)
        seen = []
        inner = search.heads.best
        search.heads.best = lambda rows, seed: seen.append(np.sort(rows)) or inner(rows, seed)
        cv = cross_fit(search.wrap(ProbeStrategy(HeadConfig(), X, X[:0], y, n_classes)), y, folds, n_classes,
                       "accuracy", 0)
        # one inner search per outer fold, on that fold's training rows only; none for the final fit
        assert [r.tolist() for r in seen] == [np.sort(tr).tolist() for tr, _ in folds]
        assert all(set(c) == set(sc.space) for c in cv.fold_chosen)
        plain.append(best.value)
        nested.append(float(np.mean(cv.scores)))
    chance, se = 1 / n_classes, np.sqrt((1 / n_classes) * (1 - 1 / n_classes) / (4 * n))
    assert np.mean(nested) <= chance + 3 * se, (nested, chance + 3 * se)
    assert np.mean(plain) > np.mean(nested), (plain, nested)


def test_searched_probe_ships_the_full_searchs_best_params():
    from transfuse.adapt.cross_fit import cross_fit
    from transfuse.adapt.probe import ProbeStrategy, make_head
    from transfuse.search.nested import SearchedProbe

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(45, 6)), np.arange(45) % 3
    X[:, 0] += y  # some signal
    folds = [(np.flatnonzero(np.arange(45) % 3 != k), np.flatnonzero(np.arange(45) % 3 == k)) for k in range(3)]
    final = {"weight_decay": 3.0, "label_smoothing": 0.1, "class_weight": "balanced"}
    strat = SearchedProbe(ProbeStrategy(HeadConfig(), X, X[:7], y, 3), _nested_search(X, y, 6, final))
    assert strat.final_choice([{"weight_decay": 1e-4}] * 3) == final  # not the folds' choices
    cv = cross_fit(strat, y, folds, 3, "accuracy", 0)
    assert cv.final.chosen == final == cv.selected["final"]
    assert len(cv.fold_chosen) == 3 and all(c != final for c in cv.fold_chosen)
    shipped = make_head(HeadConfig(**final), 3, 0).fit(X, y).predict_proba(X[:7])
    np.testing.assert_allclose(cv.test, shipped, atol=1e-6)


def test_searched_finetune_searches_inside_each_fold_and_ships_the_full_searchs_best(monkeypatch, tmp_path):
    # fine-tuning replaced by a recorder: which rows each fit saw, with which settings
    from types import SimpleNamespace

    import transfuse.train.finetune as ft_module
    from transfuse.adapt.cross_fit import cross_fit
    from transfuse.adapt.finetune import FinetuneStrategy
    from transfuse.data.base import Dataset
    from transfuse.search.nested import FinetuneSearch, HeadSearch, NestedSearch, SearchedFinetune

    calls = []

    class Model:
        def predict_proba(self, ds, batch_size=64):
            return np.full((len(ds), 3), 1 / 3, np.float32)

    def fake_finetune(backbone, train_ds, val_ds, n_classes, cfg, out_dir, head_init=None, augment=None,
                      seed=0, progress=True):
        calls.append({"train": set(train_ds.ids), "val": set(val_ds.ids) if val_ds is not None else set(),
                      "lr": cfg.lr, "epochs": cfg.epochs, "init": head_init is not None,
                      "out": Path(out_dir).relative_to(tmp_path).parts})
        n_val = len(val_ds) if val_ds is not None else 0
        return SimpleNamespace(model=Model(), history=[{"epoch": 1}], best_epoch=1 + len(calls) % 3,
                               val_proba=np.full((n_val, 3), 1 / 3, np.float32))

    monkeypatch.setattr(ft_module, "finetune", fake_finetune)
    n = 45
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(n, 4)), np.arange(n) % 3
    ds = Dataset(modality="image", items=list(X), labels=y, classes=["a", "b", "c"], ids=[f"r{i}" for i in range(n)])
    cfg = validate_config({"backbones": ["bundled:efficientnet_lite0"],
                           "adapt": {"strategies": ["linear_probe", "lp_ft"], "baseline": False},
                           "search": {"sampler": "random", "pruner": "none", "n_trials": 4, "finetune_trials": 2}})
    final = {"head": {"weight_decay": 2.0, "label_smoothing": 0.0, "class_weight": "none"},
             "finetune": {"lr": 3e-4, "layer_decay": 0.9, "label_smoothing": 0.05}}
    search = NestedSearch(cfg, HeadSearch(X, y, cfg.train.head, cfg.search, 4, "accuracy", 3, 3),
                          FinetuneSearch(cfg, object(), ds, X, 3, tmp_path / "nested"), final)
    base = FinetuneStrategy("lp_ft", object(), ds, ds.subset([0, 1]), cfg.train.finetune, cfg.train.head,
                            tmp_path / "work", features=X)
    strat = search.wrap(base)
    assert isinstance(strat, SearchedFinetune)
    folds = [(np.flatnonzero(np.arange(n) % 5 != k), np.flatnonzero(np.arange(n) % 5 == k)) for k in range(3)]
    cv = cross_fit(strat, y, folds, 3, "accuracy", 0)
    for k, (tr, va) in enumerate(folds):
        seen = {f"r{i}" for i in tr}
        # the inner study's trials (seed k), then the fold's fit (an epoch chosen on an inner split)
        trials = [c for c in calls if c["out"][0] == "nested" and c["out"][1].startswith(f"finetune_{k}_")]
        fit = [c for c in calls if c["out"] == ("work", f"fold{k}")]
        assert len(trials) == 2 and all(c["init"] for c in trials) and len(fit) == 1  # LP-FT trials
        assert all(c["train"] | c["val"] <= seen and not c["train"] & c["val"] for c in trials + fit)
        assert fit[0]["val"]
        chosen = cv.fold_chosen[k]
        assert set(chosen) == {"head", "finetune", "epochs"} and set(chosen["finetune"]) == set(final["finetune"])
        assert fit[0]["lr"] == chosen["finetune"]["lr"] != final["finetune"]["lr"]  # the fold's own search
    assert not (tmp_path / "nested").exists() or not any((tmp_path / "nested").iterdir())  # trials cleaned up
    epochs = max(1, int(round(float(np.median([c["epochs"] for c in cv.fold_chosen])))))
    assert cv.final.chosen == {**final, "epochs": epochs}
    last = calls[-1]
    assert last["out"] == ("work", "final") and not last["val"] and last["lr"] == final["finetune"]["lr"]
    assert last["epochs"] == epochs and last["train"] == {f"r{i}" for i in range(n)}


@pytest.mark.parametrize("url, message", [
    ("postgresql+pg8000://u:secret@127.0.0.1/db", "search storage 'postgresql+pg8000://u:***@127.0.0.1/db' needs "
     "the database driver pg8000, which is not installed; pip install pg8000"),
    ("mysql+pymysql://u@h/db", "search storage 'mysql+pymysql://u@h/db' needs the database driver pymysql, which "
     "is not installed; pip install pymysql"),
])
def test_missing_database_driver_is_one_line_without_the_password(url, message):
    with pytest.raises(UserError) as e:
        make_storage(url, 1)
    assert str(e.value) == message


def test_postgres_url_without_its_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if transfuse[postgres] were not installed
    with pytest.raises(UserError) as e:
        make_storage("postgresql://optuna:pw@db-host/optuna", 1)
    assert str(e.value) == ("search storage 'postgresql://optuna:***@db-host/optuna' needs the database driver "
                            "psycopg, which is not installed; pip install 'transfuse[postgres]'")


def test_variants_are_refused_where_the_search_applies_its_best(tmp_path):
    """A variant trains on top of the searched parameters and is not nested: its CV would score
    settings chosen on its own validation folds, so ``fit --search`` refuses it before any work."""
    from transfuse.errors import UserError
    from transfuse.pipeline.search import fit_with_search, refuse_variants

    raw = {"data": {"source": "wordnet", "modality": "text"}, "backbones": ["bundled:minilm_l3"],
           "adapt": {"strategies": ["lp_ft"], "variants": {"lp_ft_seed1": {"strategy": "lp_ft", "seed": 1}}}}
    with pytest.raises(UserError) as e:
        fit_with_search(validate_config(raw), tmp_path / "run", 4)
    assert str(e.value) == (
        "adapt.variants (lp_ft_seed1) cannot run in a searched run that applies its best parameters: their CV "
        "would use settings chosen on their own validation folds; drop adapt.variants, or set "
        "search.apply_best: false")
    assert not (tmp_path / "run").exists()
    refuse_variants(validate_config({**raw, "search": {"apply_best": False}}))  # the configured settings: honest
