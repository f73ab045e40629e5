"""Image transfer benchmark: EfficientNet-Lite0 on emoji categories and a Fashion-MNIST subset.

Linear probe vs fine-tune vs LP-FT (k-fold CV and test accuracy, wall time), the floor (frozen
features + scikit-learn logistic regression, as measured in ASSETS.md) and the feature-cache
speed-up (embedding the same data twice).

    .venv/bin/python benchmarks/transfer_image.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_results  # noqa: E402

from transfuse.config import validate_config  # noqa: E402
from transfuse.data.images import EMOJI_8_CATEGORIES  # noqa: E402


def task_configs(args: argparse.Namespace) -> dict[str, dict]:
    common = {
        "seed": 0,
        "split": {"folds": args.folds, "test_size": 0.2},
        "preprocess": {"image_size": args.image_size or None},  # 0: each backbone's pretrained size
        "backbones": args.backbones,
        "adapt": {"strategies": args.strategies},
        "train": {"finetune": {"epochs": args.epochs, "batch_size": 32, "lr": args.lr,
                               "patience": args.patience, "monitor": args.monitor},
                  **({"head": {"weight_decay": args.head_wd}} if args.head_wd is not None else {})},
    }
    fm_train = 30 if args.quick else args.fashion_per_class
    return {
        "emoji-8": {**common, "name": "emoji-8",
                    "data": {"source": "emoji", "modality": "image",
                             "options": {"categories": list(EMOJI_8_CATEGORIES)}},
                    "fuse": {"enabled": args.fuse}},
        "fashion-mnist": {**common, "name": "fashion-mnist",
                          "preprocess": {"image_size": args.fashion_image_size},
                             "data": {"source": "fashion_mnist", "modality": "image",
                                      "options": {"split": "train", "max_per_class": fm_train},
                                      "test_source": "fashion_mnist",
                                      "test_options": {"split": "test", "max_per_class": fm_train // 2}},
                          "fuse": {"enabled": False}},
    }


def sklearn_floor(run_dir: Path, train_feats, y, test_feats, ytest) -> float:
    """Frozen features + scikit-learn LogisticRegression (ASSETS.md's floor)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_feats, y)
    return float((clf.predict(test_feats) == ytest).mean())


def cache_speedup(cfg) -> dict:
    """Embedding time with an empty cache vs the same call again (second call reads the cache)."""
    from transfuse.backbones import create_backbone
    from transfuse.data.registry import load_dataset
    from transfuse.train.cache import FeatureCache

    data = load_dataset(cfg.data.source, cfg.data.path, **cfg.data.options)
    bb = create_backbone(cfg.backbones[0].name, image_size=cfg.preprocess.image_size)
    with tempfile.TemporaryDirectory() as d:
        cache = FeatureCache(d)
        t = time.perf_counter(); cache.embed(bb, data); first = time.perf_counter() - t
        t = time.perf_counter(); cache.embed(bb, data); second = time.perf_counter() - t
    return {"items": len(data), "first_s": first, "second_s": second, "speedup": first / second}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--image-size", type=int, default=224,
                    help="EfficientNet-Lite0's pretrained size; 0 = each backbone's own pretrained size")
    ap.add_argument("--backbones", nargs="+", default=["bundled:efficientnet_lite0"],
                    help="the floor is computed on the first one's features")
    ap.add_argument("--fuse", action="store_true", help="emoji-8: also fuse the candidates (chosen by CV)")
    ap.add_argument("--strategies", nargs="+", default=["linear_probe", "lp_ft", "finetune"])
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--monitor", default="val_loss", choices=["val_loss", "val_accuracy"])
    ap.add_argument("--head-wd", type=float, default=None,
                    help="the probe head's weight decay (also LP-FT's starting head); default: the schema's")
    ap.add_argument("--fashion-image-size", type=int, default=64)
    ap.add_argument("--fashion-per-class", type=int, default=100)
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--name", default="transfer_image", help="results file name (benchmarks/results/NAME.*)")
    ap.add_argument("--out", default="benchmarks/out/transfer_image")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.folds = 1, 2
    from transfuse.pipeline import run_experiment

    rows, extra = [], {}
    for task, raw in task_configs(args).items():
        if args.tasks and task not in args.tasks:
            continue
        cfg = validate_config(raw)
        run_dir = Path(args.out) / task
        t = time.perf_counter()
        report = run_experiment(cfg, run_dir, progress=False)
        wall = time.perf_counter() - t
        for c in report["candidates"]:
            rows.append({"task": task, "candidate": c["name"], "cv_mean": c["cv_mean"], "cv_std": c["cv_std"],
                         "test_accuracy": c["test"]["accuracy"], "test_macro_f1": c["test"]["macro_f1"],
                         "fit_seconds": c["fit_seconds"], "chosen": c["name"] == report["chosen"]})
        # the floor on the very same split and features
        from transfuse.artifacts.store import RunFolder
        from transfuse.backbones import create_backbone
        from transfuse.train.cache import FeatureCache

        data = RunFolder(run_dir).prepare_data(cfg)
        bb = create_backbone(cfg.backbones[0].name, image_size=cfg.preprocess.image_size)
        fc = FeatureCache()  # the run above filled it: no embedding here
        floor = sklearn_floor(run_dir, fc.embed(bb, data.train), data.train.labels,
                              fc.embed(bb, data.test), data.test.labels)
        rows.append({"task": task, "candidate": "frozen features + sklearn LogisticRegression",
                     "test_accuracy": floor})
        extra[f"{task} wall seconds"] = round(wall, 1)
        extra[f"{task} train/test"] = f"{report['task']['n_train']}/{report['task']['n_test']}"
        if task == "emoji-8":
            extra["feature cache (emoji-8)"] = cache_speedup(cfg)
    md = write_results(args.name + ("_quick" if args.quick else ""), rows,
                       ["task", "candidate", "cv_mean", "cv_std", "test_accuracy", "test_macro_f1",
                        "fit_seconds", "chosen"], extra)
    print(md)


if __name__ == "__main__":
    main()
