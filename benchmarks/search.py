"""Search benchmark: cached-head hyperparameter search (Optuna TPE) on emoji categories
(EfficientNet-Lite0) and WordNet nouns (MiniLM-L6).

Per task: CV score of the best trial after 10/25/50/100 trials, wall time for the head search
(target: >= 100 trials in < 60 s on emoji; wall and process CPU seconds and the load average
before the search, since the machines are shared), the cost of one cached-head trial against one
fine-tuning trial (the latter measured on a few batches and extrapolated to folds x epochs x
samples), and the searched configuration against the default one: CV and test accuracy. The searched CV
is nested (a search inside each outer fold's training rows, as ``fit --search`` scores its
searched candidates); the best trial's CV on the searched folds is shown beside it, optimistic.

    .venv/bin/python benchmarks/search.py [--trials 100] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from _common import write_results

from transfuse.config import validate_config
from transfuse.data.images import EMOJI_8_CATEGORIES


def tasks(quick: bool) -> dict[str, dict]:
    common = {"seed": 0, "split": {"folds": 5, "test_size": 0.2},
              "search": {"enabled": True, "sampler": "tpe", "pruner": "median"}}
    return {
        "emoji-8 / EfficientNet-Lite0": {**common, "name": "search-emoji",
                                         "preprocess": {"image_size": 64},  # emoji are 64 px images
                                         "data": {"source": "emoji", "modality": "image",
                                                  "options": {"categories": list(EMOJI_8_CATEGORIES)}},
                                         "backbones": ["bundled:efficientnet_lite0"]},
        "wordnet-nouns-6 / MiniLM-L6": {**common, "name": "search-wordnet",
                                        "data": {"source": "wordnet", "modality": "text",
                                                 "options": {"supersenses": ["animal", "artifact", "food", "plant",
                                                                             "person", "location"],
                                                             "max_per_class": 100 if quick else 500}},
                                        "backbones": ["bundled:minilm_l6"]},
    }


def cv_and_test(X, y, folds, Xt, yt, head_cfg, metric: str) -> tuple[float, float]:
    from transfuse.adapt.cross_fit import score
    from transfuse.train.heads import HeadClassifier

    n = int(y.max()) + 1
    cv = [score(y[va], HeadClassifier.from_config(head_cfg.model_copy(update={"seed": k}), n_classes=n)
                .fit(X[tr], y[tr]).predict_proba(X[va]), metric) for k, (tr, va) in enumerate(folds)]
    head = HeadClassifier.from_config(head_cfg, n_classes=n).fit(X, y)
    return float(np.mean(cv)), float((head.predict(Xt) == yt).mean())


def nested_cv(X, y, folds, cfg, trials: int) -> float:
    """What ``fit --search`` reports for the searched probe: each outer fold is scored by a head
    fitted with the parameters of a search (same sampler, space and trial count, inner folds) on
    that fold's training rows only (:class:`transfuse.search.nested.HeadSearch`)."""
    from transfuse.adapt.cross_fit import score
    from transfuse.adapt.probe import make_head
    from transfuse.search.nested import HeadSearch

    n = int(y.max()) + 1
    search = HeadSearch(X, y, cfg.train.head, cfg.search, trials, cfg.evaluate.metric, len(folds), n)
    cv = []
    for tr, va in folds:
        params = search.best(tr, cfg.seed)
        head = make_head(cfg.train.head.model_copy(update=params), n, cfg.seed).fit(X[tr], y[tr])
        cv.append(score(y[va], head.predict_proba(X[va]), cfg.evaluate.metric))
    return float(np.mean(cv))


def finetune_trial_seconds(cfg, data, backbone, batches: int = 3) -> float:
    """One fine-tuning trial (folds x epochs over the fold's training part), extrapolated from
    the seconds per training sample of ``batches`` batches of one epoch."""
    from transfuse.train.finetune import finetune

    ft = cfg.train.finetune.model_copy(update={"epochs": 1, "max_train_batches": batches, "patience": None,
                                               "num_workers": 0})
    tr, va = data.folds[0]
    va_small = va[:32]
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        finetune(copy.deepcopy(backbone), data.train.subset(tr), data.train.subset(va_small),
                 len(data.train.classes), ft, Path(d), seed=0, progress=False)
        secs = time.perf_counter() - t
    per_sample = secs / (batches * ft.batch_size + len(va_small))
    full = cfg.train.finetune
    return per_sample * len(data.folds) * full.epochs * (len(tr) + len(va))


def run_task(label: str, raw: dict, trials: int, measure_ft: bool) -> dict:
    import optuna

    from transfuse.search.run import run_search, search_inputs
    from transfuse.train.cache import FeatureCache

    with tempfile.TemporaryDirectory() as d:
        raw = {**raw, "output": {"dir": d}, "search": {**raw["search"], "n_trials": trials}}
        cfg = validate_config(raw)
        run_dir = Path(d)
        inputs = search_inputs(cfg, run_dir)  # the run's split, the backbone, its training features
        data, backbone, X = inputs.data, inputs.backbone, inputs.X
        Xt = FeatureCache().embed(backbone, data.test, 64, progress=False)
        y, yt = data.train.labels, data.test.labels
        load_before = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        res = run_search(cfg, run_dir, inputs=inputs)
        secs, cpu = time.perf_counter() - t, time.process_time() - c
        stage = res["stages"][0]
        # pruned trials carry a partial (first folds) value: count complete trials only
        values = [r["value"] if r["state"] == "COMPLETE" else None
                  for r in sorted(stage["trials"], key=lambda r: r["number"])]
        best_at = {n: max([v for v in values[:n] if v is not None], default=None) for n in (10, 25, 50, 100)}
        default_cv, default_test = cv_and_test(X, y, data.folds, Xt, yt, cfg.train.head, cfg.evaluate.metric)
        best_head = cfg.train.head.model_copy(update=res["best_head"])
        best_cv, best_test = cv_and_test(X, y, data.folds, Xt, yt, best_head, cfg.evaluate.metric)
        t_nested = time.perf_counter()
        nested = nested_cv(X, y, data.folds, cfg, stage["n_trials"])
        nested_s = time.perf_counter() - t_nested
        ft_secs = finetune_trial_seconds(cfg, data, backbone) if measure_ft else None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    head_trial = secs / stage["n_trials"]
    return {"task": label, "n_train": len(y), "trials": stage["n_trials"], "pruned": stage["n_pruned"],
            "search_s": secs, "search_cpu_s": cpu, "s_per_head_trial": head_trial,
            "cpu_s_per_head_trial": cpu / stage["n_trials"], "load_before": load_before,
            "est_s_per_finetune_trial": ft_secs,
            "finetune/head cost": None if ft_secs is None else ft_secs / head_trial,
            **{f"best CV @{n}": v for n, v in best_at.items()},
            "default CV": default_cv, "best trial CV (optimistic)": best_cv,
            "searched CV (nested)": nested, "nested_s": nested_s,
            "default test": default_test, "searched test": best_test,
            "best params": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in res["best_head"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="fewer WordNet glosses")
    ap.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning trial cost")
    args = ap.parse_args()
    rows = [run_task(label, raw, args.trials, not args.no_finetune) for label, raw in tasks(args.quick).items()]
    for r in rows:
        print(r, flush=True)
    cols = ["task", "n_train", "trials", "pruned", "load_before", "search_s", "search_cpu_s", "s_per_head_trial",
            "cpu_s_per_head_trial", "est_s_per_finetune_trial",
            "finetune/head cost", "best CV @10", "best CV @25", "best CV @50", "best CV @100",
            "default CV", "best trial CV (optimistic)", "searched CV (nested)", "nested_s", "default test", "searched test", "best params"]
    print(write_results("search", rows, cols, {"load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
