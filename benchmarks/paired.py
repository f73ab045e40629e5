"""Paired comparison of two candidates of one finished run: exact McNemar tests on the test split
and on the out-of-fold rows, and the per-fold CV differences; added to a result file.

    .venv/bin/python benchmarks/paired.py RUN_DIR CANDIDATE_A CANDIDATE_B --into NAME
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from _common import RESULTS, run_meta


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> dict:
    from scipy.stats import binomtest

    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n": int(len(right_a)), "right A": int(right_a.sum()), "right B": int(right_b.sum()),
            "only A": only_a, "only B": only_b, "exact McNemar p": float(p)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--into", required=True, help="results/NAME.json (and .md) to add the comparison to")
    args = ap.parse_args()
    from transfuse.adapt.result import CandidateResult
    from transfuse.artifacts.store import RunFolder
    from transfuse.config import load_config
    from transfuse.io import atomic_write_text

    rf = RunFolder(args.run)
    data = rf.prepare_data(load_config(rf.config_file))
    a, b = (CandidateResult.load(rf.candidate_dir(n)) for n in (args.a, args.b))
    block = {"A": args.a, "B": args.b,
             "test": mcnemar(a.test.argmax(1) == data.test.labels, b.test.argmax(1) == data.test.labels),
             "out-of-fold": mcnemar(a.oof.argmax(1) == data.train.labels, b.oof.argmax(1) == data.train.labels),
             "CV per fold, B - A": [round(float(x), 4) for x in np.subtract(b.cv_scores, a.cv_scores)],
             "meta": run_meta()}
    f = RESULTS / f"{args.into}.json"
    d = json.loads(f.read_text())
    d.setdefault("paired", []).append(block)
    atomic_write_text(f, json.dumps(d, indent=2) + "\n")
    md = RESULTS / f"{args.into}.md"
    t, o = block["test"], block["out-of-fold"]
    atomic_write_text(md, md.read_text().rstrip() + (
        f"\n\nPaired, {args.b} (B) vs {args.a} (A): test {t['right B']} vs {t['right A']} right of {t['n']} "
        f"({t['only B']} only B, {t['only A']} only A, exact McNemar p = {t['exact McNemar p']:.3g}); "
        f"out-of-fold {o['right B']} vs {o['right A']} of {o['n']} (p = {o['exact McNemar p']:.3g}); "
        f"CV per fold B - A: {block['CV per fold, B - A']} (`{block['meta']['command']}`)\n"))
    print(json.dumps(block, indent=2))


if __name__ == "__main__":
    main()
