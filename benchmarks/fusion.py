"""Fusion benchmark: does the CV-chosen fusion beat the best single model, by how much, at what cost?

Tasks (real data; every run goes through ``run_experiment``, i.e. ``transfuse run``):

* ``wordnet-nouns``: WordNet noun glosses -> 26 supersenses; MiniLM-L6 + MiniLM-L3 probes + TF-IDF.
* ``emoji-images``: Noto emoji -> 8 categories; EfficientNet-Lite0/1/2 probes at 128 px.
* ``speech-digits``: espeak-ng spoken digits (SYNTHETIC), tested on held-out voices; Whisper tiny.en
  encoder + Google speech_embedding probes (the scratch CNN is left out: one config applies its
  strategies to every backbone, and fine-tuning Whisper on this CPU would not fit the time budget).
* ``emoji-image-text``: emoji image + its name -> category; EfficientNet-Lite0 (image) + MiniLM-L6
  (text) and feature fusion across the two modalities.

Each task: linear-probe candidates on cached features, the four ensembles (nested CV), feature
fusion and a distilled student (linear head on the fastest backbone, taught by the best fusion).
Selection by CV only; test accuracy is measured once per candidate for the table.

    .venv/bin/python benchmarks/fusion.py [--quick] [--tasks ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import write_results

from transfuse.config import validate_config
from transfuse.data.images import EMOJI_8_CATEGORIES

COLUMNS = ["task", "candidate", "kind", "cv_mean", "test_accuracy", "gain_vs_best_single",
           "inference_ms_per_example", "params", "chosen"]
TASKS = ("speech-digits", "wordnet-nouns", "emoji-image-text", "emoji-images")


def task_config(task: str, args: argparse.Namespace) -> dict[str, Any]:
    fuse = {"distill": {"enabled": True}}
    if task == "wordnet-nouns":
        mx = {"max_length": 64}
        return {"data": {"source": "wordnet", "modality": "text",
                         "options": {"pos": "noun", "max_per_class": args.per_class, "seed": 0}},
                "backbones": [{"name": "bundled:minilm_l6", "options": mx},
                              {"name": "bundled:minilm_l3", "options": mx}, "tfidf"],
                # the TF-IDF baseline has no saved model: fusions with it are measured, not served
                "fuse": {**fuse, "include_baselines": True}}
    if task == "emoji-images":
        return {"data": {"source": "emoji", "modality": "image",
                         "options": {"categories": list(EMOJI_8_CATEGORIES)}},
                "preprocess": {"image_size": args.image_size},
                "backbones": ["bundled:efficientnet_lite0", "bundled:efficientnet_lite1",
                              "bundled:efficientnet_lite2"], "fuse": fuse}
    if task == "speech-digits":
        speech = {"words": ["digits"], "accents": args.accents, "pitches": [50], "speeds": [150],
                  "seed": 0, "test_fraction": 0.25}
        clip = {"clip_seconds": 1.5}
        return {"data": {"source": "speech", "modality": "audio", "options": {**speech, "split": "train"},
                         "test_source": "speech", "test_options": {**speech, "split": "test"}},
                "backbones": [{"name": "bundled:whisper_tiny_en_encoder", "options": clip},
                              {"name": "bundled:speech_embedding", "options": clip}], "fuse": fuse}
    if task == "emoji-image-text":
        return {"data": {"source": "emoji_multimodal", "modality": "multimodal",
                         "options": {"categories": list(EMOJI_8_CATEGORIES)}},
                "backbones": [{"name": "bundled:efficientnet_lite0", "options": {"image_size": args.image_size}},
                              {"name": "bundled:minilm_l6", "options": {"max_length": 32}}],
                "fuse": fuse}
    raise SystemExit(f"unknown task {task!r}; valid: {', '.join(TASKS)}")


def rows_for(task: str, rep: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cands = rep["candidates"]
    singles = [c for c in cands if c["kind"] in ("single", "baseline")]
    best = max(singles, key=lambda c: c["cv_mean"])
    base = best["test"]["accuracy"]
    rows = []
    for c in sorted(cands, key=lambda c: (c["kind"] != "single", c["kind"], -c["cv_mean"])):
        acc = c["test"]["accuracy"]
        rows.append({"task": task, "candidate": c["name"], "kind": c["kind"], "cv_mean": c["cv_mean"],
                     "test_accuracy": acc, "gain_vs_best_single": acc - base,
                     "inference_ms_per_example": c["inference_ms_per_example"], "params": c["params"],
                     "chosen": "yes" if c["name"] == rep["chosen"] else ""})
    chosen = next(c for c in cands if c["name"] == rep["chosen"])
    fusions = [c for c in cands if c["kind"] == "fusion"]
    top = max(fusions, key=lambda c: c["cv_mean"]) if fusions else None  # "the fusion", by CV
    student = next((c for c in cands if c["kind"] == "distilled"), None)
    summary = {"best_single": best["name"], "best_single_test": base, "chosen": chosen["name"],
               "chosen_test": chosen["test"]["accuracy"], "gain": chosen["test"]["accuracy"] - base,
               "n_train": rep["task"]["n_train"], "n_test": rep["task"]["n_test"]}
    if top is not None:
        summary.update(best_fusion=top["name"], best_fusion_gain=top["test"]["accuracy"] - base)
    if top is not None and student is not None:
        fgain = top["test"]["accuracy"] - base
        summary.update(student=student["name"], teacher=student["members"][0],
                       student_gain=student["test"]["accuracy"] - base,
                       student_recovers=(student["test"]["accuracy"] - base) / fgain if fgain > 0 else None)
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=60, help="WordNet glosses per supersense")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--accents", nargs="*", default=["en-us", "en-gb", "en-gb-scotland", "en-029"])
    ap.add_argument("--out", default="benchmarks/out/fusion")
    args = ap.parse_args()
    if args.quick:
        args.per_class, args.folds, args.accents, args.image_size = 10, 3, ["en-us"], 64
    import torch

    from transfuse.run import run_experiment

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rows, summaries = [], {}
    for task in args.tasks:
        t0 = time.perf_counter()
        cfg = validate_config({"name": f"fusion-{task}", "seed": 0, "split": {"folds": args.folds},
                               "output": {"dir": str(Path(args.out) / task)},
                               **task_config(task, args)})
        rep = run_experiment(cfg, progress=False)
        r, s = rows_for(task, rep)
        s["seconds"] = round(time.perf_counter() - t0, 1)
        rows += r
        summaries[task] = s
        print(f"{task}: {s}", flush=True)
        md = write_results("fusion_quick" if args.quick else "fusion", rows, COLUMNS,  # after each task
                           {"summary": summaries, "folds": args.folds, "per_class": args.per_class,
                            "image_size": args.image_size, "accents": args.accents})
    print(md)


if __name__ == "__main__":
    main()
