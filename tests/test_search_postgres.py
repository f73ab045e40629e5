"""Search workers on a real PostgreSQL server (a throw-away one, tests/postgres_server.py): three
``transfuse search --storage postgresql://...`` processes share one study, one of them is killed
(SIGKILL) mid-trial, and the study still ends at exactly ``n_trials`` finished trials."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import write_digits_folder

N_TRIALS = 24


def _search(cfg: Path, url: str, worker: bool, kill_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("TRANSFUSE_FAULT_KILL_AT", None)
    if kill_at:
        env["TRANSFUSE_FAULT_KILL_AT"] = kill_at
    args = [sys.executable, "-m", "transfuse.cli", "search", str(cfg), "--storage", url, "--quiet"]
    return subprocess.Popen(args + (["--worker"] if worker else []), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_study(url: str, name: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the first process has created the study (read with SQL: an Optuna storage opened
    here would create the tables itself, racing the process under test)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(url) as conn:
                if conn.execute("SELECT 1 FROM studies WHERE study_name = %s", (name,)).fetchone():
                    return
        except psycopg.errors.UndefinedTable:  # no tables yet
            pass
        if proc.poll() is not None and proc.returncode != -9:
            raise AssertionError(f"the first search process exited {proc.returncode}: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError(f"no study {name!r} after {timeout} s")


def test_three_workers_on_postgres_survive_a_killed_worker(tmp_path, postgres_url):
    import optuna

    data = write_digits_folder(tmp_path / "digits")
    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "pg", "data": {"source": "folder", "path": str(data)},
        "split": {"folds": 3, "test_size": 0.25}, "preprocess": {"image_size": 32},
        "backbones": ["bundled:efficientnet_lite0"], "adapt": {"baseline": False},
        "output": {"dir": str(tmp_path / "run")},
        "search": {"sampler": "random", "pruner": "none", "heartbeat_s": 1, "n_trials": N_TRIALS}}))
    # the first process creates the study, finishes one trial and is killed in the middle of its
    # second (after its first fold, its heartbeat running); the two workers join the study once it
    # exists, fail the dead trial after the grace period, retry it and finish the study
    first = _search(cfg, postgres_url, worker=False, kill_at="trial:2")
    _wait_for_study(postgres_url, "pg", first)
    workers = [_search(cfg, postgres_url, worker=True) for _ in range(2)]
    first.wait(timeout=300)
    outs = [p.communicate(timeout=300) for p in workers]
    assert first.returncode == -9, first.communicate()
    for p, (_, err) in zip(workers, outs):  # the summary goes to stderr, with the progress
        assert p.returncode == 0, err[-3000:]
        assert f"heads on cached features: {N_TRIALS} finished trials (0 pruned; " in err, err
        assert "; 1 failed), best CV " in err, err  # the killed trial
    here = [int(re.search(r"; (\d+) run by this process;", err)[1]) for _, err in outs]

    every = optuna.load_study(study_name="pg", storage=postgres_url).trials
    # two workers racing for the last trial: the later one is marked FAIL with overflow before it
    # runs anything (run_study), and counts nowhere
    overflow = [t for t in every if t.user_attrs.get("overflow")]
    assert all(t.state.name == "FAIL" and not t.intermediate_values for t in overflow), overflow
    trials = [t for t in every if not t.user_attrs.get("overflow")]
    states = [t.state.name for t in every]
    assert states.count("COMPLETE") == N_TRIALS == 1 + sum(here)  # the first process finished one
    assert not {"RUNNING", "WAITING"} & set(states)
    killed = [t for t in trials if t.state.name == "FAIL"]
    assert len(killed) == 1 and list(killed[0].intermediate_values) == [0]  # died after its first fold
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == killed[0].params  # the dead trial's parameters, run again
    assert len({t.number for t in trials}) == len(trials) == N_TRIALS + 1
