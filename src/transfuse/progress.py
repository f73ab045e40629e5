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

#: soft_wrap: a long line is never cut or broken at 80 columns in a log (the terminal wraps it)
console = Console(stderr=True, soft_wrap=True)


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


#: Loggers of the libraries that print loading bars, advisories and "GPU available" lines.
LIBRARY_LOGGERS = ("transformers", "huggingface_hub", "sentence_transformers", "lightning", "lightning.pytorch",
                   "lightning.fabric", "pytorch_lightning", "timm", "optuna")


def quiet_libraries() -> None:
    """``--quiet``: silence Hugging Face / transformers progress bars, advisories and warnings,
    and the training libraries' info lines (errors still print). Environment variables cover a
    library imported later; a library already imported is told directly."""
    import logging
    import os
    import sys
    import warnings

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("transformers", "huggingface_hub", "sentence_transformers", "timm", "lightning", "torch"):
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
