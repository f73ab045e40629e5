"""Who is rank 0, what a follower may not do, and the check that every rank is at the same fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transfuse import distributed, io
from transfuse.errors import UserError

RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


@pytest.mark.parametrize("env, label", [
    ({}, None),
    ({"RANK": "0", "LOCAL_RANK": "0"}, None),
    ({"RANK": "3", "LOCAL_RANK": "1"}, "rank 3"),  # torchrun: the global rank decides
    ({"RANK": "0", "LOCAL_RANK": "1"}, None),
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, "rank 1"),  # Lightning's launcher
    ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, None),  # rank 0 after it launched the others
    ({"NODE_RANK": "1"}, "node 1, local rank 0"),
    ({"LOCAL_RANK": "2", "NODE_RANK": "1"}, "node 1, local rank 2"),
    ({"SLURM_PROCID": "0"}, None),
    ({"SLURM_PROCID": "5"}, "SLURM task 5"),
])
def test_rank_label_from_the_launchers_environment(monkeypatch, env, label):
    for k in RANK_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.rank_label() == label
    assert distributed.is_follower() is (label is not None)


def test_planned_world_size():
    assert distributed.planned_world_size("cpu", 2, 1) == 2
    assert distributed.planned_world_size("cpu", "auto", 3) == 3  # one process per CPU machine
    assert distributed.planned_world_size("gpu", 4, 2) == 8


def test_a_follower_cannot_write(tmp_path: Path):
    io.forbid_writes("rank 1 of a distributed run")
    try:
        with pytest.raises(RuntimeError) as e:
            io.atomic_write_json(tmp_path / "report.json", {})
        assert str(e.value) == (f"internal error: rank 1 of a distributed run must not write "
                                f"{str(tmp_path / 'report.json')!r} (only rank 0 writes the run folder and the caches)")
        with pytest.raises(RuntimeError):
            io.copy_folder(tmp_path, tmp_path / "copy")
        assert list(tmp_path.iterdir()) == []
    finally:
        io.forbid_writes(None)
    io.atomic_write_json(tmp_path / "report.json", {})
    assert (tmp_path / "report.json").read_text() == "{}\n"


def test_a_searched_run_is_refused_under_ddp(tmp_path: Path, digits_folder: Path):
    from transfuse.config import validate_config
    from transfuse.pipeline.search import fit_with_search

    cfg = validate_config({"data": {"source": "folder", "path": str(digits_folder)},
                           "backbones": ["bundled:efficientnet_lite0"], "search": {"enabled": True},
                           "train": {"finetune": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}}})
    with pytest.raises(UserError) as e:
        fit_with_search(cfg, tmp_path / "run", 4)
    assert str(e.value) == (
        "search.enabled with distributed fine-tuning (train.finetune.devices x num_nodes = 2 processes): a "
        "searched run fine-tunes on one device; set train.finetune.devices: 1, or scale the search out with "
        "'transfuse search --worker' processes (docs/distributed.md)")
    assert not (tmp_path / "run").exists()


def _gather(rank: int, port: int, keys: list[dict], errors) -> None:
    import torch.distributed as dist

    from transfuse.train.finetune import check_same_fit

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        check_same_fit(keys[rank], 2)
        errors.put((rank, None))
    except UserError as e:
        errors.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


def test_ranks_at_different_fits_stop_with_one_line(tmp_path: Path):
    import socket

    import torch.multiprocessing as mp

    from transfuse.config import FinetuneConfig
    from transfuse.data.base import Dataset
    from transfuse.train.finetune import fit_key

    class Bb:
        spec = "tiny"

    data = Dataset(modality="text", items=[f"t{i}" for i in range(8)], labels=np.array([0, 1] * 4), classes=["a", "b"],
                   ids=[f"x{i}" for i in range(8)])
    cfg = FinetuneConfig(epochs=1)
    key0 = fit_key(tmp_path / "lp_ft" / "fold1", cfg, 2, 1, Bb(), data.subset(range(6)), data.subset([6, 7]), False)
    same = fit_key(Path("/elsewhere/run/work/lp_ft/fold1"), cfg, 2, 1, Bb(), data.subset(range(6)),
                   data.subset([6, 7]), False)
    assert same == key0  # the run folder's mount point does not matter, only CANDIDATE/FOLD
    key1 = fit_key(tmp_path / "lp_ft" / "fold0", cfg, 2, 0, Bb(), data.subset(range(2, 8)), data.subset([0, 1]), False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_gather, args=(r, port, [key0, key1], errors)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict(errors.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    want = ("rank 1 is not at the same fine-tuning fit as rank 0 (differs in: fit, settings, train rows, validation "
            "rows; rank 0 at 'lp_ft/fold1', rank 1 at 'lp_ft/fold0'); start every rank with the same command, "
            "config and data, with the run folder on storage all of them see (docs/distributed.md)")
    assert got == {0: want, 1: want}


def test_a_follower_waits_for_rank_0s_file(tmp_path: Path, monkeypatch):
    import threading

    target = tmp_path / "fold0" / "finetune_config.json"
    timer = threading.Timer(0.4, lambda: (target.parent.mkdir(), target.write_text("{}")))
    timer.start()
    distributed.wait_for_rank0(target, "the fine-tune in fold0", poll_s=0.05)
    assert target.exists()

    # the process that started this one (Lightning's launcher: rank 0) ends: a one-line error
    for k in RANK_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    parents = iter([100, 100, 1])
    monkeypatch.setattr(distributed.os, "getppid", lambda: next(parents))
    with pytest.raises(UserError) as e:
        distributed.wait_for_rank0(tmp_path / "never", "the fine-tune in fold1", poll_s=0.01)
    assert str(e.value) == ("rank 1: the process that started it ended before rank 0 reached the fine-tune in "
                            "fold1; see rank 0's error, then 'transfuse resume RUN_DIR'")


def test_the_python_api_needs_out_under_ddp(tmp_path: Path, monkeypatch):
    import transfuse

    monkeypatch.chdir(tmp_path)
    texts, labels = [f"text {i}" for i in range(10)], ["a", "b"] * 5
    ddp = {"train": {"finetune": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}}}
    with pytest.raises(UserError) as e:
        transfuse.fit(texts, labels, backbones=["tfidf"], strategies=["linear_probe", "finetune"], config=ddp)
    assert str(e.value) == ("transfuse.fit: the fine-tuning runs on 2 processes (train.finetune.devices x num_nodes), "
                            "each running this script: give out= (the same run folder, on storage every process sees)")
    assert list(tmp_path.iterdir()) == []


def test_a_time_limit_is_refused_under_ddp(tmp_path: Path, digits_folder: Path):
    from transfuse.config import validate_config
    from transfuse.pipeline import run_experiment

    cfg = validate_config({"data": {"source": "folder", "path": str(digits_folder)},
                           "backbones": ["bundled:efficientnet_lite0"], "budget": {"time_limit": 600},
                           "train": {"finetune": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}}})
    with pytest.raises(UserError) as e:
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert str(e.value) == (
        "budget.time_limit with distributed fine-tuning (train.finetune.devices x num_nodes = 2 processes): the "
        "planner decides by each process's clock, so the ranks could reach different fits; set "
        "train.finetune.devices: 1, or leave out the time limit")
    assert not (tmp_path / "run").exists()


def test_a_slurm_task_is_a_follower_only_of_a_distributed_fine_tune(monkeypatch):
    for k in RANK_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")  # e.g. one of `srun --ntasks 16 transfuse search --worker`
    assert distributed.follower_label("cpu", 1, 1) is None
    assert distributed.follower_label("cpu", 2, 1) == "SLURM task 3"
    assert distributed.following() is None  # only the pipeline makes a process a follower
