"""``transfuse fit --time-limit T`` end to end: does the whole command end within T (+10 %), with a
finished report, and what did the planner keep?

Each (task, limit) runs ``transfuse fit`` in a fresh process with an empty feature cache (a user's
first run: every embedding is computed), timed from outside; the row reads the run's report: the
chosen candidate, its CV and test accuracy, what ran and what the planner skipped or stopped.

    .venv/bin/python benchmarks/time_limit.py [--tasks emoji wordnet] [--limits 60] [--preset medium]

``--cold`` drops the page cache before each run (the imports, weights and data are read from disk,
as on a machine whose cache another job emptied); ``--slow-disk MBPS:IOPS`` also throttles reads
and writes on the disk that holds the virtual environment (a blkio cgroup, cgroup v1). Both need
root.
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


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def throttle_disk(spec: str) -> str:
    """Move this process (and so the runs it starts) into a blkio cgroup that limits the disk
    holding the virtual environment to ``MBPS:IOPS``; returns the device, as ``major:minor``."""
    mbps, iops = (float(x) for x in spec.split(":"))
    dev = os.stat(sys.executable).st_dev
    dev_id = f"{os.major(dev)}:{os.minor(dev)}"
    part = Path(f"/sys/dev/block/{dev_id}")
    if (part / "partition").exists():  # throttling applies to the whole disk
        dev_id = (part.resolve().parent / "dev").read_text().strip()
    group = Path("/sys/fs/cgroup/blkio/transfuse-slow-disk")
    group.mkdir(exist_ok=True)
    for rw in ("read", "write"):
        (group / f"blkio.throttle.{rw}_bps_device").write_text(f"{dev_id} {int(mbps * 1e6)}\n")
        (group / f"blkio.throttle.{rw}_iops_device").write_text(f"{dev_id} {int(iops)}\n")
    (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return dev_id


def run_one(task: str, limit: float, preset: str | None, out: Path, cold: bool = False) -> dict:
    run = out / f"{task}-{limit:g}"
    shutil.rmtree(run, ignore_errors=True)
    cache = Path(tempfile.mkdtemp(prefix="tl-cache-"))
    if cold:
        drop_page_cache()
    cmd = [str(Path(sys.executable).with_name("transfuse")), "fit", *TASKS[task], "--out", str(run),
           "--time-limit", f"{limit:g}", "--quiet"] + (["--preset", preset] if preset else [])
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFUSE_FEATURE_CACHE": str(cache)})
    wall = time.time() - t
    shutil.rmtree(cache, ignore_errors=True)
    row = {"task": task, "limit_s": limit, "wall_s": round(wall, 1), "within_limit": wall <= 1.1 * limit}
    if p.returncode != 0:
        return {**row, "chosen": "error: " + p.stderr.strip().splitlines()[-1].removeprefix("error: ")[:200]}
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
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run (root)")
    ap.add_argument("--slow-disk", metavar="MBPS:IOPS", help="throttle the disk (root, cgroup v1 blkio)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extra = {"preset": args.preset or "medium (default under a time limit)",
             "feature cache": "empty at the start of every run"}
    if args.slow_disk:
        mbps, iops = args.slow_disk.split(":")
        dev = throttle_disk(args.slow_disk)
        extra["disk"] = f"throttled to {mbps} MB/s and {iops} IO/s, reads and writes (device {dev})"
    if args.cold or args.slow_disk:
        extra["page cache"] = "dropped before each run"
    rows = []
    for task in args.tasks:
        for limit in args.limits:
            rows.append(run_one(task, limit, args.preset, args.out, cold=bool(args.cold or args.slow_disk)))
            print(json.dumps(rows[-1]), flush=True)
    print(write_results(args.name, rows, COLUMNS, extra))


if __name__ == "__main__":
    main()
