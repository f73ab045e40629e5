"""A test hook, read in one place: ``TRANSFUSE_FAULT_KILL_AT=STAGE[:N]`` SIGKILLs the process the
N-th time (default: the first) it reaches ``fault_point(STAGE)``. The kill tests use it to stop a
run at a named point (``embed``, ``fold``, ``fusion``, ``report``; ``trial``: a search trial after
its first fold) the way a crash or an OOM killer would; unset (always, outside the tests) it does
nothing."""

from __future__ import annotations

import os
import signal

STAGES = ("embed", "fold", "fusion", "report", "trial")
_reached: dict[str, int] = {}


def fault_point(stage: str) -> None:
    want = os.environ.get("TRANSFUSE_FAULT_KILL_AT")
    if not want or want.partition(":")[0] != stage:
        return
    _reached[stage] = _reached.get(stage, 0) + 1
    if _reached[stage] >= int(want.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)
