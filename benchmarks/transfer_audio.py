"""Audio transfer benchmark: spoken digits + command words on held-out voices.

The 10 digits and 10 command words (``transfuse.data.speech`` DIGITS, COMMANDS) spoken by
espeak-ng (SYNTHETIC, see docs/audio.md) in ``--accents`` x 20 voice variants; the test set's 5
variants are never heard in training, in any accent (voice-disjoint). Candidates, through the real
pipeline (:func:`transfuse.run.run_experiment`, validated configs; one seed, same split and folds):

* ``whisper_tiny_en_encoder/linear_probe``: frozen Whisper tiny.en encoder + linear head;
* ``speech_embedding/linear_probe``: frozen Google speech_embedding (ONNX) + linear head;
* ``scratch_cnn/finetune``: log-mel + small CNN trained from scratch (no transfer), augmented;
* optionally ``whisper_tiny_en_encoder/lp_ft`` (``--whisper-lp-ft``): the encoder fine-tuned.

    nice -n 5 .venv/bin/python benchmarks/transfer_audio.py [--quick]
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

from _common import write_results  # noqa: E402
from transfer_text import adopt_run_folder, fine_tune_seconds, finished_report  # noqa: E402

from transfuse.config import validate_config  # noqa: E402

COLUMNS = ["task", "candidate", "cv_mean", "cv_std", "test_accuracy", "test_macro_f1", "seconds",
           "inference_ms_per_example"]


def groups(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], list[str], dict[str, Any]]]:
    """``(group, backbone section, strategies, train section)`` in the order they run."""
    clip = {"clip_seconds": args.clip_seconds}
    out = [
        ("whisper", {"name": "bundled:whisper_tiny_en_encoder", "options": clip}, ["linear_probe"], {}),
        ("speech_embedding", {"name": "bundled:speech_embedding", "options": clip}, ["linear_probe"], {}),
        ("scratch_cnn", {"name": "scratch_cnn", "options": clip}, ["finetune"],
         {"finetune": {"epochs": args.cnn_epochs, "batch_size": 32, "lr": 3e-3, "head_lr": "1x",
                       "weight_decay": 1e-4, "patience": None,
                       # trained from scratch: BatchNorm must learn its statistics (the
                       # fine-tuning default keeps pretrained BN frozen)
                       "freeze_bn": False}}),
    ]
    if args.whisper_lp_ft:
        out.append(("whisper-lp_ft", {"name": "bundled:whisper_tiny_en_encoder", "options": clip}, ["lp_ft"],
                    {"finetune": {"epochs": args.whisper_epochs, "batch_size": 32, "lr": 1e-4,
                                  "patience": None}}))
    return out


def make_config(group: str, backbone: dict[str, Any], strategies: list[str], train: dict[str, Any],
                args: argparse.Namespace) -> Any:
    speech = {"words": ["digits", "commands"], "accents": args.accents, "pitches": args.pitches,
              "speeds": [150], "seed": 0, "test_fraction": 0.25}
    return validate_config({
        "name": f"speech-20-{group}", "seed": 0,
        "data": {"source": "speech", "modality": "audio", "options": {**speech, "split": "train"},
                 "test_source": "speech", "test_options": {**speech, "split": "test"}},
        "split": {"folds": args.folds}, "backbones": [backbone],
        "adapt": {"strategies": strategies},
        # head_lr pinned to the value these results were measured with (the default is now "auto")
        "train": {**train, "finetune": {"head_lr": "10x", **train.get("finetune", {})}},
        "fuse": {"enabled": False},  # this benchmark measures transfer; fusion has its own
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    ap.add_argument("--accents", nargs="*", default=["en-us", "en-gb", "en-gb-scotland", "en-029"])
    ap.add_argument("--pitches", type=int, nargs="*", default=[50])
    ap.add_argument("--clip-seconds", type=float, default=1.5)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--cnn-epochs", type=int, default=15)
    ap.add_argument("--whisper-lp-ft", action="store_true", help="also fine-tune Whisper (LP-FT; slow on CPU)")
    ap.add_argument("--whisper-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="benchmarks/out/transfer_audio_r2")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.accents, args.cnn_epochs, args.whisper_epochs, args.folds = ["en-us"], 2, 1, 2
    from transfuse.run import run_experiment

    name = "transfer_audio" + ("_quick" if args.quick else "")
    task = "digits+commands (20 words), held-out voices"
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    for group, backbone, strategies, train in groups(args):
        cfg = make_config(group, backbone, strategies, train, args)
        t = time.perf_counter()
        run_dir = Path(args.out) / group
        report = finished_report(cfg, run_dir)
        if report is None:
            adopt_run_folder(cfg, run_dir)
            report = run_experiment(cfg, run_dir, progress=False)
        wall = time.perf_counter() - t
        print(f"{group}: {wall:.0f} s", flush=True)
        for c in report["candidates"]:
            embed = report["timings"].get(f"embed:{c['name'].split('/')[0]}", 0.0)
            rows.append({"task": task, "candidate": c["name"], "cv_mean": c["cv_mean"], "cv_std": c["cv_std"],
                         "test_accuracy": c["test"]["accuracy"], "test_macro_f1": c["test"]["macro_f1"],
                         "seconds": c["fit_seconds"] + embed if c["strategy"] == "linear_probe"
                         else fine_tune_seconds(run_dir, c),
                         "inference_ms_per_example": c["inference_ms_per_example"]})
        extra["train/test clips"] = f"{report['task']['n_train']}/{report['task']['n_test']}"
        extra["quarantined"] = len(report["quarantined"])
        extra["load average (1, 5, 15 min) at the end"] = [round(x, 2) for x in os.getloadavg()]
        md = write_results(name, rows, COLUMNS, {**extra, "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "quick")}})
    whisper = [r for r in rows if r["candidate"].startswith("whisper")]
    cnn = [r for r in rows if r["candidate"].startswith("scratch_cnn")]
    if whisper and cnn:
        best = max(whisper, key=lambda r: r["cv_mean"])
        extra["Whisper (best by CV) test accuracy"] = round(best["test_accuracy"], 4)
        extra["Whisper - scratch CNN (test)"] = round(best["test_accuracy"] - cnn[0]["test_accuracy"], 4)
        md = write_results(name, rows, COLUMNS, {**extra, "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "quick")}})
    print(md)


if __name__ == "__main__":
    main()
