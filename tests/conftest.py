"""Shared fixtures: an isolated feature cache, small real image folders, a throw-away PostgreSQL,
a ``transfuse serve`` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: The slowest test files (their module fixtures fit real runs), started first so that the two
#: workers of ``make test`` (pytest-xdist, ``--dist loadfile``) do not end on one of them alone;
#: measured with ``--durations`` on 2 cores (2026-12-06): random labels 512 s, serving 197 s,
#: fault corpus 87 s, DDP CLI 100 s.
SLOW_FIRST = ("test_random_labels.py", "test_serving.py", "test_corpus.py", "test_ddp_cli.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(SLOW_FIRST)))  # stable: file order kept otherwise


@pytest.fixture(autouse=True, scope="session")
def _isolated_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["TRANSFUSE_FEATURE_CACHE"] = str(tmp_path_factory.mktemp("features"))


def write_digits_folder(root: Path, classes: tuple[int, ...] = (0, 1, 7), per_class: int = 12,
                        size: int = 32) -> Path:
    """An image folder of real handwritten digits (sklearn's ``load_digits``), upscaled PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        (root / f"digit{c}").mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(d.target == c)[:per_class]
        for i in idx:
            img = (d.images[i] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(img).resize((size, size), Image.NEAREST).save(root / f"digit{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("digits"))


def cli(*args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run ``transfuse ARGS`` in a fresh interpreter; with ``check``, a non-zero exit fails the test."""
    p = subprocess.run([sys.executable, "-m", "transfuse.cli", *args], capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"transfuse {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def predict_test_split(run: Path) -> np.ndarray:
    """``transfuse predict RUN <the run's test images> --json`` as an (n, classes) probability array
    (a run over a ``folder`` source; columns in the dataset's class order)."""
    import yaml

    from transfuse.data.registry import load_dataset

    splits = json.loads((run / "splits.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    data = load_dataset("folder", cfg["data"]["path"])
    files = [data.items[i] for i in splits["test_idx"]]
    p = cli("predict", str(run), *files, "--json")
    return np.array([[row["proba"][c] for c in data.classes] for row in map(json.loads, p.stdout.splitlines())])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``transfuse serve RUN ARGS`` in a subprocess on a free loopback port, up once ``/health``
    answers (its answer: ``health``); ``stop()`` ends it."""

    def __init__(self, run: Path, *args: str):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "transfuse.cli", "serve", str(run), "--port",
                                      str(self.port), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 300
        while True:
            try:
                self.health = httpx.get(self.url + "/health", timeout=2).json()
                return
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"server did not start:\n{self.proc.stdout.read()[-3000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_config(cfg: dict) -> Path:
    """Validate a config dict and run the whole pipeline on it; returns its run folder."""
    from transfuse.config import validate_config
    from transfuse.pipeline import run_experiment

    run_experiment(validate_config(cfg), progress=False)
    return Path(cfg["output"]["dir"])


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server on loopback for the session (tests/postgres_server.py)."""
    from postgres_server import postgres_server as _server

    with _server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A new, empty database on the session's PostgreSQL server, for one test."""
    import re

    from postgres_server import create_database

    return create_database(postgres_server, "t_" + re.sub(r"\W", "_", request.node.name)[:50].lower())
