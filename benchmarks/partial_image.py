"""Cached partial fine-tuning (``partial_ft``) on images: the cost of one step on the top stages
against one through the whole network, and its cross-validated accuracy against the probes and
LP-FT of the whole network.

Data (``--task``): ``fashion``, the 1,000 Fashion-MNIST training images that ``benchmarks/peers.py
--split-seed 1`` draws (100 per class; no Fashion-MNIST test image is read); or ``emoji``, the
1,511 images of the 8 emoji categories (the run's ``--seed`` partitions them: seeds 0 and 1 give
peers.py's test splits, so the default is 7). Each run holds out 20 % as a dev split (its "test"
part) and cross-validates on the rest. Every variant is one
``transfuse fit`` in a fresh process (EfficientNet-Lite0 at 224 px, 3 folds, no fusion), sharing
one feature cache, so only the first run pays for the embedding.

    .venv/bin/python benchmarks/partial_image.py [--variants NAME ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_results

PARTIAL = ["--strategy", "partial_ft"]
MILD = ["--set", "augment.image.random_resized_crop=[0.8,1.0]", "--set", "augment.image.color_jitter=0"]
LOW_RES_LONG = ["--set", "preprocess.image_size=112", "--set", "train.finetune.lr=3e-4", "--set", "train.finetune.epochs=10",
                "--set", "train.finetune.patience=null", "--set", "train.finetune.monitor=val_accuracy"]
#: name -> fit arguments (train.finetune defaults otherwise: lr 1e-4, up to 10 epochs, patience 3)
VARIANTS: dict[str, list[str]] = {
    "probes": ["--strategy", "linear_probe", "--strategy", "multilayer_probe"],
    "lp_ft (whole network, 4 epochs)": ["--strategy", "lp_ft", "--set", "train.finetune.epochs=4"],
    "partial_ft, top 1 stage": [*PARTIAL, "--set", "train.partial.blocks=1"],
    "partial_ft, top 2 stages": [*PARTIAL, "--set", "train.partial.blocks=2"],
    "partial_ft, top 3 stages": [*PARTIAL, "--set", "train.partial.blocks=3"],
    "partial_ft, top 2 stages, 4 augmented views": [*PARTIAL, "--set", "train.partial.blocks=2",
                                                    "--set", "train.partial.views=4"],
    "partial_ft, top 2 stages, lr 3e-5, label smoothing 0.1": [
        *PARTIAL, "--set", "train.partial.blocks=2", "--set", "train.finetune.lr=3e-5",
        "--set", "train.finetune.label_smoothing=0.1"],
    # session 16, on the fifth peers task (docs/peers.md): longer, cheaper or milder-augmented fine-tunes
    "partial_ft, top 1 stage, lr 1e-3, up to 15 epochs, patience 5": [
        *PARTIAL, "--set", "train.partial.blocks=1", "--set", "train.finetune.lr=1e-3",
        "--set", "train.finetune.epochs=15", "--set", "train.finetune.patience=5",
        "--set", "train.finetune.monitor=val_accuracy"],
    "partial_ft, top 2 stages, 4 mild views (crop 0.8-1, no colour jitter)": [
        *PARTIAL, "--set", "train.partial.blocks=2", "--set", "train.partial.views=4", *MILD],
    "partial_ft, top 1 stage, lr 3e-4, up to 15 epochs, 4 mild views": [
        *PARTIAL, "--set", "train.partial.blocks=1", "--set", "train.partial.views=4", *MILD,
        "--set", "train.finetune.lr=3e-4", "--set", "train.finetune.epochs=15"],
    "lp_ft at 112 px, lr 3e-4, 10 epochs, no early stopping": [
        "--strategy", "lp_ft", *LOW_RES_LONG],
    "finetune at 112 px, lr 3e-4, 10 epochs, no early stopping": [
        "--strategy", "finetune", *LOW_RES_LONG],
    # the backbone option scales (fashion_ceiling.py: 128+224+320 px led on both seeds' training images)
    "probes, scales 128 and 320 px beside 224": [
        "--strategy", "linear_probe", "--strategy", "multilayer_probe",
        "--set", 'backbones=[{"name": "bundled:efficientnet_lite0", "options": {"scales": [128, 320]}}]'],
}
COLUMNS = ["variant", "candidate", "cv_mean", "cv_std", "dev_accuracy", "epochs", "wall_s"]


def data_args(args: argparse.Namespace) -> list[str]:
    if args.task == "emoji":
        from transfuse.data.images import EMOJI_8_CATEGORIES

        return ["--data", "emoji", "--modality", "image", "--seed", str(args.seed),
                "--set", "data.options.categories=" + json.dumps(list(EMOJI_8_CATEGORIES))]
    return ["--data", "fashion_mnist", "--modality", "image", "--set", "data.options.split=train",
            "--set", f"data.options.max_per_class={args.per_class}", "--set", f"data.options.seed={args.seed}"]


def run_variant(name: str, extra: list[str], args: argparse.Namespace, cache: Path) -> list[dict]:
    out = args.out / re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).with_name("transfuse")), "fit", *data_args(args),
           "--backbone", "bundled:efficientnet_lite0", "--folds", str(args.folds), "--set", "fuse.enabled=false",
           "--set", "adapt.baseline=false", *extra, "--out", str(out), "--quiet"]
    if args.quick:
        cmd += ["--set", "train.finetune.epochs=1", "--set", "preprocess.image_size=96"]
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFUSE_FEATURE_CACHE": str(cache)})
    wall = round(time.time() - t, 1)
    if p.returncode != 0:
        return [{"variant": name, "candidate": f"error: {(p.stderr.strip().splitlines() or ['?'])[-1][:200]}",
                 "wall_s": wall}]
    rep = json.loads((out / "report.json").read_text())
    rows = []
    for c in rep["candidates"]:
        final = (c.get("selected") or {}).get("final") or {}
        rows.append({"variant": name, "candidate": c["name"], "cv_mean": round(c["cv_mean"], 4),
                     "cv_std": round(c["cv_std"], 4), "dev_accuracy": round(c["test"]["accuracy"], 4),
                     "epochs": final.get("epochs"), "wall_s": wall})
    return rows


def step_costs(args: argparse.Namespace) -> list[dict]:
    """One training step (32 images, extrapolated from 8 and 16 as the time-limit planner does)
    through the whole network and through each top on its cached activations, side by side."""
    import torch

    from transfuse.adapt.partial import cached_activations
    from transfuse.backbones.registry import create_backbone
    from transfuse.backbones.split import split_backbone
    from transfuse.config import FinetuneConfig
    from transfuse.data.registry import load_dataset
    from transfuse.train.finetune import measure_step

    torch.set_num_threads(args.threads)
    data = load_dataset("fashion_mnist", None, split="train", max_per_class=4, seed=args.seed).subset(range(32))
    size = 96 if args.quick else 224
    bb = create_backbone("bundled:efficientnet_lite0", image_size=size)
    ft = FinetuneConfig(batch_size=32)
    rows = []
    for rep in range(args.repeats):
        whole = measure_step(bb, data, 10, ft)
        rows.append({"top": "whole network", "repeat": rep, "step_s": round(whole.train_step, 4), "speedup": 1.0})
        for blocks in (1, 2, 3):
            split = split_backbone(bb, blocks)
            cached = cached_activations(split, bb, data, batch_size=32)
            cost = measure_step(split.top, cached, 10, ft)
            rows.append({"top": f"top {blocks} stage(s)", "repeat": rep, "step_s": round(cost.train_step, 4),
                         "speedup": round(whole.train_step / cost.train_step, 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--task", choices=["fashion", "emoji"], default="fashion")
    ap.add_argument("--per-class", type=int, default=100, help="fashion: training images per class")
    ap.add_argument("--seed", type=int, default=None,
                    help="fashion: the draw (peers.py --split-seed; default 1); emoji: the run's seed (default 7)")
    ap.add_argument("--no-steps", action="store_true", help="skip the step timings")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="step measurements per network")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 epoch at 96 px: checks the script runs")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "partial_image")
    ap.add_argument("--name", default="partial_image")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = 7 if args.task == "emoji" else 1
    args.out.mkdir(parents=True, exist_ok=True)
    steps = [] if args.no_steps else step_costs(args)
    for r in steps:
        print(json.dumps(r), flush=True)
    cache = args.out / "feature_cache"
    rows = []
    for name in args.variants:
        rows += run_variant(name, VARIANTS[name], args, cache)
        print(json.dumps(rows[-1]), flush=True)
    medians = {}
    for top in dict.fromkeys(r["top"] for r in steps):
        vals = sorted(r["step_s"] for r in steps if r["top"] == top)
        medians[top] = vals[len(vals) // 2]
    data = (f"emoji, 8 categories, run seed {args.seed}" if args.task == "emoji" else
            f"Fashion-MNIST train, {args.per_class} per class, seed {args.seed}")
    extra: dict = {"data": f"{data}; 20 % held out as the dev split"}
    if steps:
        extra[f"one training step of 32 images, median of {args.repeats} (speed-up against the whole network)"] = \
            "; ".join(f"{k} {v:.3f} s ({medians['whole network'] / v:.1f}x)" for k, v in medians.items())
        extra["step measurements"] = steps
    print(write_results(args.name, rows, COLUMNS, extra))


if __name__ == "__main__":
    main()
