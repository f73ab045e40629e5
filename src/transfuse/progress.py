"""Rich progress bars for long steps (quiet when disabled or not on a terminal)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def track(items: Iterable[T], total: int | None = None, description: str = "",
          enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr when ``enabled``."""
    if not enabled:
        yield from items
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                  transient=False) as prog:
        task = prog.add_task(description, total=total)
        for item in items:
            yield item
            prog.advance(task)
