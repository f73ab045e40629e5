"""Distributed fine-tuning: Lightning DDP over 2 CPU processes (gloo) trains the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# Lightning's DDP launcher re-runs this script for rank 1, so it must be a file, not `python -c`.
_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_finetune import digits_split, make_backbone, quick_cfg
from transfuse.train.finetune import finetune

train, val = digits_split()
val = val.subset(range(319))  # odd: the validation sampler pads one rank with a repeated row
cfg = quick_cfg(epochs=2, strategy="ddp", accelerator="cpu", devices=2)
res = finetune(make_backbone(), train, val, 10, cfg, {out!r}, progress=False)
world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
report = {{"rank": int(os.environ.get("LOCAL_RANK", 0)), "world": world, "history": res.history,
          "initial": res.initial, "best_epoch": res.best_epoch, "n_proba": len(res.val_proba),
          "proba_acc": float((res.val_proba.argmax(1) == val.labels).mean())}}
with open(os.path.join({out!r}, "rank%d.json" % report["rank"]), "w") as f:
    json.dump(report, f)
"""


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_fit.py"
    script.write_text(_SCRIPT.format(tests=str(TESTS), out=str(out)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]

    reports = {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert all(rep["world"] == 2 for rep in reports.values())
    r0 = reports[0]
    assert [h["epoch"] for h in r0["history"]] == [1, 2]
    assert reports[1]["history"] == r0["history"]  # metrics are reduced over both processes
    assert r0["history"][-1]["val_accuracy"] > r0["initial"]["val_accuracy"] + 0.3
    # the probabilities come from the best checkpoint, over the whole validation set; the reduced
    # validation accuracy counts each of the 319 rows once (not the row DistributedSampler repeats)
    assert r0["n_proba"] == 319
    assert abs(r0["proba_acc"] - r0["history"][r0["best_epoch"] - 1]["val_accuracy"]) < 1e-9
    assert (out / "finetune.json").is_file() and (out / "model.safetensors").is_file()
