"""The embedded demos, end to end: run each afresh (in the benchmark's own folder; the feature
cache may already hold the inputs' features), then serve every candidate with ``predict --candidate`` on the run's test inputs and compare with the report.

Per candidate: CV (mean ± std over the outer folds), the report's test accuracy, the accuracy of
what ``predict --candidate NAME`` returns on the same test inputs, and the largest difference
between those probabilities and the ones the run saved; the chosen model is served by plain
``predict RUN``. Wall seconds per demo: the run alone, and the serving checks.

    .venv/bin/python benchmarks/demos.py [--tasks image text audio]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from _common import write_results


def serve_check(run: Path) -> list[dict]:
    from transfuse.adapt.result import CandidateResult
    from transfuse.artifacts.store import RunFolder
    from transfuse.config import load_config
    from transfuse.export.predict import predict

    rf = RunFolder(run)
    test = rf.prepare_data(load_config(rf.config_file)).test
    items = [str(test.items[i]) for i in range(len(test))]
    rep = json.loads((run / "report.json").read_text())
    rows = []
    for c in sorted(rep["candidates"], key=lambda c: -c["cv_mean"]):
        saved = CandidateResult.load(rf.candidate_dir(c["name"])).test
        p = predict(run, items, candidate=c["name"])["proba"]
        rows.append({"task": rep["name"], "candidate": c["name"], "kind": c["kind"],
                     "cv": f"{c['cv_mean']:.4f} ± {c['cv_std']:.4f}", "test (report)": c["test"]["accuracy"],
                     "test (predict --candidate)": float((p.argmax(1) == test.labels).mean()),
                     "max |p - saved|": float(np.abs(p - saved).max()),
                     "chosen": "yes" if c["name"] == rep["chosen"] else ""})
    p = predict(run, items)["proba"]
    rows.append({"task": rep["name"], "candidate": f"predict RUN (the chosen {rep['chosen']})", "kind": "",
                 "cv": "", "test (report)": rep["test"]["accuracy"],
                 "test (predict --candidate)": float((p.argmax(1) == test.labels).mean()),
                 "max |p - saved|": float(np.abs(p - np.load(run / "model" / "test_proba.npy")).max()),
                 "chosen": ""})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="*", default=["image", "text", "audio"])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "demos")
    ap.add_argument("--name", default="demos")
    args = ap.parse_args()
    from transfuse.cli import DEMOS
    from transfuse.config import load_config
    from transfuse.pipeline import run_experiment

    import shutil

    rows, walls = [], {}
    for task in args.tasks:
        run = args.out / f"demo-{task}"
        shutil.rmtree(run, ignore_errors=True)  # the benchmark's own folder: always a fresh run
        t = time.perf_counter()
        run_experiment(load_config(DEMOS / f"{task}.yaml"), run, progress=False)
        t1 = time.perf_counter()
        rows += serve_check(run)
        walls[task] = {"run": round(t1 - t, 1), "serving checks": round(time.perf_counter() - t1, 1)}
    cols = ["task", "candidate", "kind", "cv", "test (report)", "test (predict --candidate)", "max |p - saved|",
            "chosen"]
    print(write_results(args.name, rows, cols, {"wall seconds": walls}))


if __name__ == "__main__":
    main()
