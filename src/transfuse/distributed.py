"""Which process of a distributed run this is, read from the launcher's environment.

A DDP fine-tune is started as N copies of the same command: Lightning's launcher re-runs
``sys.argv`` for local ranks 1..N-1 (``LOCAL_RANK``, ``NODE_RANK`` set), ``torchrun`` starts every
rank itself (``RANK``), SLURM's ``srun`` every task (``SLURM_PROCID``). Rank 0 is the one process
that writes the run folder; every other rank is a *follower*: it replays the run's fine-tuning
fits (the distributed work) without writing anything (docs/distributed.md).

Lightning's launcher starts ranks 1..N-1 only at rank 0's first ``Trainer.fit``; rank 0 keeps
their process handles here (:func:`keep_followers`) and waits for them at the end of the run
(:func:`wait_for_followers`), so that a run ends when all its processes have ended, with their
exit codes.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

#: Launcher variables that name a non-zero rank, in the order they are trusted: the global rank
#: (torchrun), the machine and the process on it (Lightning's launcher), the SLURM task.
RANK_VARS = ("RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK", "SLURM_PROCID")

_followers: list[subprocess.Popen] = []


def _int_env(name: str) -> int | None:
    v = os.environ.get(name, "").strip()
    return int(v) if v.lstrip("-").isdigit() else None


def rank_label() -> str | None:
    """``None`` on rank 0 (or outside a distributed launch), else how this process is named by
    its launcher, e.g. ``"rank 1"`` or ``"node 1, local rank 0"``."""
    if (r := _int_env("RANK")) is not None:  # torchrun: the global rank decides alone
        return None if r == 0 else f"rank {r}"
    node = _int_env("NODE_RANK") or _int_env("GROUP_RANK") or 0
    local = _int_env("LOCAL_RANK")
    if local is not None or node:
        if node == 0 and not local:
            return None
        return f"rank {local}" if node == 0 else f"node {node}, local rank {local or 0}"
    task = _int_env("SLURM_PROCID")
    return f"SLURM task {task}" if task else None


def is_follower() -> bool:
    """True in every process of a distributed launch but rank 0."""
    return rank_label() is not None


def follower_label(accelerator: str, devices: int | str, num_nodes: int) -> str | None:
    """This process's rank label when it is a follower of a distributed fine-tune with these
    settings, else None: a non-zero rank whose fine-tuning runs on one process (``srun`` tasks of
    search workers or embedding shards each have a ``SLURM_PROCID``) is not anyone's follower."""
    who = rank_label()
    return who if who is not None and planned_world_size(accelerator, devices, num_nodes) > 1 else None


_following: str | None = None


def become_follower(who: str) -> None:
    """Mark this process as follower ``who`` of a distributed run (set by the pipeline)."""
    global _following
    _following = who


def following() -> str | None:
    """The label :func:`become_follower` set, or None: a process the pipeline made a follower
    waits for rank 0's files and writes none."""
    return _following


def keep_followers(trainer: Any) -> None:
    """Remember the processes a Trainer's launcher started (Lightning's subprocess launcher keeps
    them in ``launcher.procs``; other launchers start none here)."""
    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
    for p in procs:
        if all(p is not q for q in _followers):
            _followers.append(p)


def wait_for_followers(timeout: float | None = None) -> list[tuple[int, int | None]]:
    """Wait for the processes :func:`keep_followers` saw; ``[(pid, exit code)]`` (``None``: still
    running after ``timeout`` seconds)."""
    out = []
    while _followers:
        p = _followers.pop(0)
        try:
            code: int | None = p.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        out.append((p.pid, code))
    return out


def planned_world_size(accelerator: str, devices: int | str, num_nodes: int) -> int:
    """How many processes a fine-tune with these settings runs on: ``devices`` x ``num_nodes``,
    ``devices: auto`` being every CUDA GPU (one process on a CPU)."""
    if devices == "auto":
        import torch

        gpus = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
        devices = max(1, gpus)
    return int(devices) * int(num_nodes)


def refuse_under_ddp(ft: Any, key: str, why: str, fix: str) -> None:
    """One-line refusal of ``key`` when the fine-tuning section ``ft`` runs on several processes:
    ``"{key} with distributed fine-tuning (... = N processes): {why}; {fix}"``."""
    from transfuse.errors import UserError

    n = planned_world_size(ft.accelerator, ft.devices, ft.num_nodes)
    if n > 1:
        raise UserError(f"{key} with distributed fine-tuning (train.finetune.devices x num_nodes = {n} "
                        f"processes): {why}; {fix}")


def wait_for_rank0(path: Path, what: str, poll_s: float = 0.5) -> None:
    """Block until rank 0 has written ``path`` (on storage every rank sees). A follower waits here,
    not inside a collective: a collective gives up after the process group's timeout (30 min),
    while rank 0 may spend longer on work of its own (embedding, probes, a raw baseline) before
    the next fit. If the process that started this one ends (Lightning's launcher: rank 0 itself),
    the wait ends with a one-line error; ``torchrun`` and ``srun`` stop every rank themselves."""
    from transfuse.errors import UserError

    parent = os.getppid()
    while not path.exists():
        if os.getppid() != parent:
            raise UserError(f"{rank_label()}: the process that started it ended before rank 0 reached {what}; "
                            "see rank 0's error, then 'transfuse resume RUN_DIR'")
        time.sleep(poll_s)
