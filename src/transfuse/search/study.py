"""Optuna plumbing: samplers, storages, opening and running a study, and summarising it.

A study lives in an Optuna RDB storage (a sqlite file in the run folder by default), so a killed
search resumes, and workers on other machines join it with ``transfuse search CONFIG --worker
--storage URL``. :func:`run_study` stops at exactly ``n_trials`` finished (complete or pruned)
trials, whatever the number of workers. ``storage=None``: an in-memory study (the nested search).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.config import ParamSpace
from transfuse.errors import UserError

log = logging.getLogger(__name__)

_LIVE = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")


class _Overflow(Exception):
    """This trial would exceed the study's n_trials (another worker got there first)."""


def suggest(trial: Any, name: str, space: ParamSpace) -> Any:
    """Draw one parameter from ``space`` on an Optuna trial."""
    if space.kind == "categorical":
        return trial.suggest_categorical(name, list(space.choices or ()))
    if space.kind == "int":
        return trial.suggest_int(name, int(space.low), int(space.high), step=int(space.step or 1), log=space.log)
    return trial.suggest_float(name, float(space.low), float(space.high), step=space.step, log=space.log)


def make_sampler(kind: str, space: dict[str, ParamSpace], seed: int, grid_points: int = 5) -> Any:
    import optuna

    if kind == "grid":
        return optuna.samplers.GridSampler({k: v.grid(grid_points) for k, v in space.items()}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)


def grid_size(space: dict[str, ParamSpace], grid_points: int) -> int:
    return int(np.prod([len(v.grid(grid_points)) for v in space.values()])) if space else 1


def trial_budget(sampler: str, n_trials: int, space: dict[str, ParamSpace], grid_points: int) -> int:
    """``n_trials``, or fewer for a grid that has fewer points (a grid visits each point once)."""
    return min(n_trials, grid_size(space, grid_points)) if sampler == "grid" else n_trials


def make_storage(url: str, heartbeat_s: int) -> Any:
    """An Optuna RDB storage with heartbeats: trials of a killed worker are failed and retried."""
    path = _sqlite_file(url)
    with _init_lock(path):  # workers started together create the tables one after the other
        if path is not None:
            _wal_mode(path)
        storage = _rdb_storage(url, heartbeat_s)
    if path is not None:
        _no_fsync_per_commit(storage.engine)
    return storage


def _rdb_storage(url: str, heartbeat_s: int) -> Any:
    import optuna
    import sqlalchemy

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
                kw = {"heartbeat_stale_trial_callback": retry(max_retry=3)} if retry else \
                    {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
                if url.startswith("sqlite"):
                    # wait for another worker's write lock up to 60 s (sqlite's default 5 s ran out
                    # on 2 loaded cores: "database is locked" surfaced as a failed commit)
                    kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s,
                                                  grace_period=2 * heartbeat_s, **kw)
        except Exception as e:  # noqa: BLE001 -- bad URL, missing driver, unreachable server
            race = isinstance(e, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError))
            if race and attempt < 4:  # e.g. a worker of another version creating the tables too
                time.sleep(0.2 * (attempt + 1))
                continue
            if isinstance(e, ImportError):  # the URL's database driver is not installed
                name = e.name or getattr(e.__cause__, "name", None) or "its driver"  # optuna re-raises
                psycopg = url.partition("://")[0] in ("postgresql", "postgresql+psycopg")
                fix = "pip install 'transfuse[postgres]'" if psycopg else f"pip install {name}"
                raise UserError(f"search storage {safe_url(url)!r} needs the database driver {name}, which is "
                                f"not installed; {fix}") from None
            raise UserError(f"search storage {safe_url(url)!r} cannot be opened ({type(e).__name__}: {e}); "
                            "give an Optuna RDB URL such as sqlite:///search.db") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def _sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL whose folder exists (else ``None``: not
    sqlite, in memory, or a folder that is missing, which the storage then reports)."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    try:
        db = make_url(url).database
    except Exception:  # noqa: BLE001 -- a malformed URL: the storage says so
        return None
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    path = Path(db).expanduser()
    return path if path.parent.is_dir() else None


@contextmanager
def _init_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock on ``PATH.lock`` (nothing for other storages)."""
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    try:
        with FileLock(f"{path}.lock", timeout=120):
            yield
    except Timeout:
        raise UserError(f"search storage {path}: another process has held {path}.lock for 120 s; "
                        "if no search is starting, delete that file") from None


def _wal_mode(path: Path) -> None:
    """Switch the file to WAL mode before any table exists (WAL persists in the file).

    Done later, on a worker's first connection, the switch fails at once with "database is
    locked" while another worker writes (sqlite does not wait there): the likely cause of a
    worker that crashed creating its study while the other created the tables. Under
    :func:`_init_lock` only a worker past its set-up can hold a lock."""
    import sqlite3

    deadline = time.monotonic() + 60  # the switch does not wait for a writer: retry until then
    while True:
        con = sqlite3.connect(path, timeout=1)
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA journal_mode=WAL")  # a file system without WAL keeps its mode
            return
        except sqlite3.DatabaseError as e:
            if "locked" not in str(e):  # e.g. not a database: the storage reports it
                return
            if time.monotonic() > deadline:
                raise UserError(f"search storage {path}: the database stayed locked for 60 s; "
                                "stop the process that holds it, or give another file") from None
        finally:
            con.close()
        time.sleep(0.1)


def safe_url(url: str) -> str:
    """A storage URL without its password (``postgresql://user:***@host/db``), for messages."""
    head, sep, tail = url.partition("://")
    cred, at, host = tail.rpartition("@")
    if not sep or not at or ":" not in cred:
        return url
    return f"{head}://{cred.split(':', 1)[0]}:***@{host}"


def _no_fsync_per_commit(engine: Any) -> None:
    """``synchronous=NORMAL`` on every connection (WAL mode is set in the file already): a commit
    no longer waits for the disk (about 20 commits per trial took 9 ms each), yet a killed
    process loses nothing committed; only a power cut may lose the last commits. WAL needs one
    machine (no network disk)."""
    from sqlalchemy import event

    def pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened while creating the tables get the pragma too


def open_study(storage: Any, name: str, sampler: Any, pruner: str, worker: bool) -> Any:
    """Create the study, or load it (``worker``: it must exist already). ``storage=None``: in memory."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    p = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0) if pruner == "median" \
        else optuna.pruners.NopPruner()
    if storage is None:
        storage = optuna.storages.InMemoryStorage()
    if worker:
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=p)
        except KeyError:
            raise UserError(f"no study {name!r} in the search storage; start it first with "
                            "'transfuse search CONFIG' (without --worker)") from None
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=p,
                               direction="maximize", load_if_exists=True)


def finished_count(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(study: Any, objective: Callable[[Any], float], n_trials: int,
              timeout: float | None = None) -> int:
    """Run trials until the study holds ``n_trials`` finished trials (all workers together).

    A trial whose number ranks past ``n_trials`` among live trials (a race between workers)
    is marked FAIL with ``overflow=True`` before it runs anything, so no trial is lost or run
    twice. When the remaining trials are running elsewhere, it waits for them: a worker killed
    meanwhile has its trial failed after the heartbeat grace period and retried here (also one
    killed before its first heartbeat). Returns how many trials this process finished."""
    from optuna.trial import TrialState

    live = tuple(getattr(TrialState, s) for s in _LIVE)
    done_here, t0 = 0, time.monotonic()
    storage = study._storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    adopted: set[int] = set()
    overflowed = [False]  # whether THIS process's last trial overflowed (the study's last trial
    #                       may be another worker's)

    def guarded(trial: Any) -> float:
        before = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        overflowed[0] = len(before) >= n_trials
        if overflowed[0]:
            trial.set_user_attr("overflow", True)
            raise _Overflow()
        return objective(trial)

    while timeout is None or time.monotonic() - t0 < timeout:
        if interval:
            _reap(study, storage, 2 * interval, adopted)
        trials = study.get_trials(deepcopy=False, states=live)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if finished >= n_trials:
            break
        if len(trials) >= n_trials and not waiting:
            if not interval:  # no heartbeats: a dead worker's trial would never end; stop here
                break
            time.sleep(min(1.0, interval / 2))  # the last trials run elsewhere: wait for them
            continue
        study.optimize(guarded, n_trials=1, catch=(_Overflow,))
        if not overflowed[0]:
            done_here += 1
    return done_here


def _reap(study: Any, storage: Any, grace_s: float, adopted: set[int]) -> None:
    """Fail (and retry) the trials of dead workers. Optuna fails a RUNNING trial whose last
    heartbeat is older than the grace period, but never one that has no heartbeat at all (its
    worker died between creating it and the first heartbeat); such a trial, once older than the
    grace period, gets one heartbeat recorded here, so it goes stale like the others."""
    from datetime import datetime, timedelta

    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    with warnings.catch_warnings():  # optuna marks it experimental
        warnings.simplefilter("ignore")
        fail_stale_trials(study)
    old = datetime.now() - timedelta(seconds=grace_s)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t._trial_id not in adopted and t.datetime_start is not None and t.datetime_start < old:
            adopted.add(t._trial_id)
            storage.record_heartbeat(t._trial_id)


def summarize(study: Any, stage: str) -> dict[str, Any]:
    """Trials table, best trial, parameter importances and the optimisation history of a study."""
    import optuna
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("overflow")]
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "fold_scores": t.user_attrs.get("fold_scores"),
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
             if t.datetime_complete and t.datetime_start else None} for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {"stage": stage, "study": study.study_name, "n_trials": len(rows),
                           "n_complete": len(complete),
                           "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                           "trials": rows, "best_value": None, "best_params": None, "importances": {}}
    best = best_trial(study)
    if best is not None:
        out.update(best_value=best.value, best_params=best.params, best_number=best.number)
        varied = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
        if len(complete) >= 4 and varied:
            try:
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=sorted(varied))
                out["importances"] = {k: float(v) for k, v in imp.items()}
            except (RuntimeError, ValueError) as e:  # e.g. too few distinct trials
                log.info("no parameter importances: %s", e)
    return out


def best_trial(study: Any) -> Any:
    """The complete trial with the highest value (the first of ties), or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None
