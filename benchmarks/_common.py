"""Shared helpers for benchmark scripts: machine description, JSON + Markdown output."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__} threads {torch.get_num_threads()}, {dev}"


def code_version() -> str:
    """transfuse's version and the git commit measured (``+dirty`` when the tree had changes)."""
    import subprocess

    from transfuse import __version__

    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", ""
    return f"transfuse {__version__} git {rev or 'unknown'}{'+dirty' if dirty else ''}"


_CODE_AT_START: str | None = None


def run_meta() -> dict[str, Any]:
    """What every result file records: date, machine, the code version the benchmark started on
    (read when this module is imported), command and machine load."""
    return {"date": dt.date.today().isoformat(), "machine": machine(), "code": _CODE_AT_START or code_version(),
            "command": "python " + " ".join(sys.argv),
            "load average (1, 5, 15 min) at the end": [round(x, 2) for x in os.getloadavg()]}


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def write_results(name: str, rows: list[dict[str, Any]], columns: list[str],
                  extra: dict[str, Any] | None = None) -> str:
    """Write ``results/NAME.json`` and ``results/NAME.md``; return the Markdown."""
    RESULTS.mkdir(exist_ok=True)
    from transfuse.io import atomic_write_text

    meta = run_meta()
    atomic_write_text(RESULTS / f"{name}.json", json.dumps({**meta, **(extra or {}), "rows": rows}, indent=2) + "\n")
    md = (f"{markdown_table(rows, columns)}\n\n"
          f"{meta['date']}, {meta['machine']}, {meta['code']}; `{meta['command']}`\n")
    if extra:
        md += "".join(f"\n- {k}: {v}" for k, v in extra.items()) + "\n"
    atomic_write_text(RESULTS / f"{name}.md", md)
    return md


_CODE_AT_START = code_version()  # benchmarks import this module first: the code they measure
