"""``transfuse fit --time-limit T`` end to end: does the whole command end within T (+10 %), with a
finished report, and what did the planner keep?

Each (task, limit) runs ``transfuse fit`` in a fresh process with an empty feature cache (a user's
first run: every embedding is computed), timed from outside; the row reads the run's report: the
chosen candidate, its CV and test accuracy, what ran and what the planner skipped or stopped.

    .venv/bin/python benchmarks/time_limit.py [--tasks emoji wordnet] [--limits 60] [--preset medium]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_results

#: ``fit`` arguments per task (the same data as benchmarks/transfer_image.py and transfer_text.py).
TASKS: dict[str, list[str]] = {
    "emoji": ["--data", "emoji"],
    "wordnet": ["--data", "wordnet", "--set", "data.options.pos=noun", "--set", "data.options.max_per_class=60",
                "--set", "data.options.seed=0"],
    "spamassassin": ["--data", "spamassassin", "--set", "data.options.max_per_class=300",
                     "--set", "data.options.seed=0"],
}
COLUMNS = ["task", "limit_s", "wall_s", "within_limit", "chosen", "cv", "test_accuracy", "candidates",
           "skipped_or_stopped", "fine-tuning plan"]


def run_one(task: str, limit: float, preset: str | None, out: Path) -> dict:
    run = out / f"{task}-{limit:g}"
    shutil.rmtree(run, ignore_errors=True)
    cache = Path(tempfile.mkdtemp(prefix="tl-cache-"))
    cmd = [str(Path(sys.executable).with_name("transfuse")), "fit", *TASKS[task], "--out", str(run),
           "--time-limit", f"{limit:g}", "--quiet"] + (["--preset", preset] if preset else [])
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFUSE_FEATURE_CACHE": str(cache)})
    wall = time.time() - t
    shutil.rmtree(cache, ignore_errors=True)
    row = {"task": task, "limit_s": limit, "wall_s": round(wall, 1), "within_limit": wall <= 1.1 * limit}
    if p.returncode != 0:
        return {**row, "chosen": f"error: {p.stderr.strip().splitlines()[-1][:200]}"}
    rep = json.loads((run / "report.json").read_text())
    chosen = next(c for c in rep["candidates"] if c["name"] == rep["chosen"])
    plan = [f"{d['name']}: {d['action']} ({d['reason']})" for d in rep.get("plan", {}).get("decisions", [])]
    return {**row, "chosen": rep["chosen"], "cv": round(chosen["cv_mean"], 4),
            "test_accuracy": round(rep["test"]["accuracy"], 4), "candidates": len(rep["candidates"]),
            "skipped_or_stopped": "; ".join(f"{s['name']}: {s['reason']}" for s in rep.get("skipped", [])) or "none",
            "fine-tuning plan": "; ".join(plan) or "none"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="*", default=["emoji", "wordnet"], choices=sorted(TASKS))
    ap.add_argument("--limits", nargs="*", type=float, default=[60.0])
    ap.add_argument("--preset", choices=["fast", "medium", "best"], default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "time_limit")
    ap.add_argument("--name", default="time_limit")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks:
        for limit in args.limits:
            rows.append(run_one(task, limit, args.preset, args.out))
            print(json.dumps(rows[-1]), flush=True)
    print(write_results(args.name, rows, COLUMNS, {"preset": args.preset or "medium (default under a time limit)",
                                                   "feature cache": "empty at the start of every run"}))


if __name__ == "__main__":
    main()
