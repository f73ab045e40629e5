"""Model soups inside ``fit``: do a backbone's soups beat their best ingredient under honest CV?

One ``run_experiment`` (what ``transfuse run`` does): WordNet noun glosses -> supersenses, one text
backbone fine-tuned two ways (``finetune``: fresh head, ``lp_ft``: head started from the probe),
then ``fuse.soups`` makes the uniform and the greedy soup of the two (each outer fold souped from
that fold's models, greedy choosing on the fold's inner validation rows). The table: every
candidate's CV (3 folds, the run's own) and test accuracy; the summary: each soup's CV minus its
best ingredient's, fold by fold. The uniform soup is then exported to ONNX (``transfuse export
--candidate``) and the parity recorded.

    HF_HUB_OFFLINE=1 nice -n 5 .venv/bin/python benchmarks/soups_fit.py [--quick]

More ingredients: ``--variant NAME=STRATEGY[,seed=S][,KEY=VALUE...]`` adds an ``adapt.variants``
entry (KEY: a ``train.finetune`` key), e.g. ``--strategies linear_probe lp_ft --variant
lp_ft_seed1=lp_ft,seed=1 --variant lp_ft_lr3e-4=lp_ft,lr=3e-4 --name soups_fit_variants``.
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml
from _common import write_results

COLUMNS = ["candidate", "kind", "cv_mean", "cv_std", "cv_folds", "test_accuracy", "members", "fit_seconds"]


def number(text: str) -> object:
    """A ``--variant`` value: a number where it reads as one (YAML takes ``2e-4`` for a string)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 supersenses, 1 epoch")
    ap.add_argument("--backbone", default="bundled:minilm_l3")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--supersenses", nargs="*", default=None, help="default: all 26 noun supersenses")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/out/soups_fit")
    ap.add_argument("--name", default="soups_fit")
    ap.add_argument("--strategies", nargs="+", default=["linear_probe", "finetune", "lp_ft"])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=STRATEGY[,seed=S][,KEY=VALUE]",
                    help="an adapt.variants entry (repeatable)")
    args = ap.parse_args()
    import torch

    from transfuse.config import validate_config
    from transfuse.export.onnx import export_run
    from transfuse.pipeline import run_experiment

    torch.set_num_threads(args.threads)
    options = {"pos": "noun", "max_per_class": args.per_class, "seed": 0}
    if args.quick:
        options["supersenses"] = ["animal", "food", "artifact", "person"]
    elif args.supersenses:
        options["supersenses"] = args.supersenses
    variants = {}
    for v in args.variant:
        name, _, spec = v.partition("=")
        strategy, *pairs = spec.split(",")
        keys = dict(p.split("=", 1) for p in pairs)
        variants[name] = {"strategy": strategy, **({"seed": int(keys.pop("seed"))} if "seed" in keys else {}),
                          "finetune": {k: number(x) for k, x in keys.items()}}
    cfg = validate_config({
        "name": args.name, "seed": 0,
        "data": {"source": "wordnet", "modality": "text", "options": options},
        "split": {"folds": args.folds, "test_size": 0.2},
        "backbones": [{"name": args.backbone, "options": {"max_length": 64}}],
        "adapt": {"strategies": args.strategies, "variants": variants},
        "train": {"finetune": {"epochs": 1 if args.quick else args.epochs, "batch_size": 16,
                               "accelerator": "cpu", "devices": 1, "precision": "32-true", "num_workers": 0}},
        "fuse": {"ensembles": ["mean"], "features": {"enabled": False}},
        "output": {"dir": args.out}})
    t0 = time.perf_counter()
    rep = run_experiment(cfg, progress=False, overwrite=True)
    seconds = time.perf_counter() - t0
    rows = [{"candidate": c["name"], "kind": c["kind"], "cv_mean": c["cv_mean"], "cv_std": c["cv_std"],
             "cv_folds": " ".join(f"{s:.3f}" for s in c["cv_scores"]), "test_accuracy": c["test"]["accuracy"],
             "members": " + ".join(c["members"] or []), "fit_seconds": round(c["fit_seconds"], 1)}
            for c in rep["candidates"]]
    soups = [c for c in rep["candidates"] if c["name"].startswith("soup/")]
    summary = {}
    for s in soups:
        ingredients = [c for c in rep["candidates"] if c["kind"] == "single" and c["strategy"] in ("finetune", "lp_ft")]
        best = max(ingredients, key=lambda c: c["cv_mean"])
        summary[s["name"]] = {
            "best_ingredient": best["name"], "cv_minus_best_ingredient": round(s["cv_mean"] - best["cv_mean"], 4),
            "per_fold": [round(a - b, 4) for a, b in zip(s["cv_scores"], best["cv_scores"], strict=True)],
            "test_minus_best_ingredient": round(s["test"]["accuracy"] - best["test"]["accuracy"], 4),
            "shipped_members": s["members"],
            **({"fold_kept": [f["kept"] for f in s["selected"]["folds"]]} if s["selected"] else {})}
    t1 = time.perf_counter()
    exp = export_run(args.out, candidate=next(s["name"] for s in soups if s["name"].endswith("/uniform")))
    export = {k: exp.get(k) for k in ("parity_max_abs_diff", "onnx_bytes", "size_bytes") if k in exp}
    export["seconds"] = round(time.perf_counter() - t1, 1)
    for r in rows:
        print(r, flush=True)
    print(json.dumps(summary, indent=1))
    md = write_results(args.name + ("_quick" if args.quick else ""), rows, COLUMNS, extra={
        "task": (f"WordNet noun glosses, {len(rep['task']['classes'])} supersenses, {args.per_class} per class "
                 f"(train/test {rep['task']['n_train']}/{rep['task']['n_test']}); {args.backbone} (max_length 64); "
                 f"{args.folds}-fold CV; fine-tunes {1 if args.quick else args.epochs} epochs, schema defaults "
                 "otherwise (inner_val 0.2, lr 1e-4, head lr auto)"),
        "strategies and variants": {"strategies": args.strategies, "variants": variants},
        "soups vs best ingredient": summary, "chosen": rep["chosen"],
        "export of the uniform soup (ONNX)": export, "run_seconds": round(seconds, 1),
        "soup_seconds": {s["name"]: round(s["fit_seconds"], 1) for s in soups}})
    print(md)


if __name__ == "__main__":
    main()
