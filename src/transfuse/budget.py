"""The run's time limit (``fit --time-limit``), read in one place.

A :class:`Budget` holds a deadline on the wall clock. While one is active (:func:`active_budget`),
the long loops (embedding batches, fine-tuning steps, folds, fusions) call :func:`check`, which
raises :class:`TimeLimitReached` once the work deadline has passed; the pipeline catches it around
each candidate, drops the unfinished one and closes the run with what finished. The work deadline
stops ``reserve`` seconds before the limit, so the report and the promoted model are written in
time. Outside a budgeted run :func:`check` does nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any


class TimeLimitReached(Exception):
    """The work deadline of the active budget passed (``where``: what was running)."""

    def __init__(self, where: str, limit: float):
        super().__init__(f"{where}: stopped at the time limit ({limit:g} s)")
        self.where, self.limit = where, limit
        #: what a stopped loop finished before it stopped (the embedding: features of its first items)
        self.partial: Any = ()


def process_start() -> float:
    """When this process started (wall clock, seconds since the epoch): the interpreter's start-up
    and imports count against a command's time limit. Falls back to now where /proc is missing."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class Budget:
    """``limit`` seconds from ``start`` (wall clock); work stops ``reserve`` seconds early."""

    def __init__(self, limit: float, start: float | None = None, reserve: float | None = None,
                 clock: Callable[[], float] = time.time):
        self.limit, self.clock = float(limit), clock
        self.start = clock() if start is None else float(start)
        self.reserve = max(2.0, 0.05 * self.limit) if reserve is None else float(reserve)

    @property
    def deadline(self) -> float:
        """The end of the whole command."""
        return self.start + self.limit

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds of work left (to the work deadline; negative once past it)."""
        return self.deadline - self.reserve - self.clock()

    def over(self) -> bool:
        """True once the whole command's limit (not only the work deadline) has passed."""
        return self.clock() >= self.deadline

    def check(self, where: str) -> None:
        if self.left() <= 0:
            raise TimeLimitReached(where, self.limit)

    def check_projection(self, where: str, done: int, total: int, started: float) -> None:
        """Stop a loop early when, at its measured pace (``done`` of ``total`` units since
        ``started``, same clock), it cannot end before the work deadline."""
        self.check(where)
        if 0 < done < total:
            pace = (self.clock() - started) / done
            if pace * (total - done) > self.left():
                raise TimeLimitReached(f"{where} (about {pace * (total - done):.0f} s more needed, "
                                       f"{max(self.left(), 0):.0f} s left)", self.limit)


_active: list[Budget] = []


def active_budget() -> Budget | None:
    return _active[-1] if _active else None


@contextlib.contextmanager
def budgeted(budget: Budget | None) -> Iterator[Budget | None]:
    """Make ``budget`` the active one inside the block (``None``: no limit)."""
    if budget is None:
        yield None
        return
    _active.append(budget)
    try:
        yield budget
    finally:
        _active.remove(budget)


def over() -> bool:
    """True when the active budget's limit has passed (:meth:`Budget.over`); False without one."""
    return bool(_active) and _active[-1].over()


def check(where: str) -> None:
    """Raise :class:`TimeLimitReached` if the active budget's work deadline passed."""
    if _active:
        _active[-1].check(where)


def check_projection(where: str, done: int, total: int, started: float) -> None:
    """:meth:`Budget.check_projection` on the active budget (``started``: ``time.time()``)."""
    if _active:
        _active[-1].check_projection(where, done, total, started)
