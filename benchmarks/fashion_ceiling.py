"""How far frozen EfficientNet-Lite0 features go on the Fashion-MNIST subset (issue 12's fifth task).

On the 1,000 Fashion-MNIST training images that ``benchmarks/peers.py --split-seed N`` draws
(100 per class; no test image is read), 5-fold CV accuracy of heads on frozen Lite0 features,
varied one thing at a time against the multi-layer probe that the time-limited ``fit`` ships:

- pooling: global mean (the probe's), a 2x2 grid of means of the final map;
- stages: the final features alone, or with the last three stages' pooled outputs (``taps: 3``);
- input size: 128, 224 (the pretrained size), 320 px (the 28-px images upscaled);
- horizontal flips: flipped copies as more training rows, and/or averaged in at prediction;
- heads: the pipeline's linear head (weight decay 1e-3 and 1e-1), its MLP head, an RBF SVM;
- BatchNorm statistics re-estimated on the training images (AdaBN; all 1,000 images, so the
  validation folds' pixels are in the statistics: optimistic, and it still loses).

    .venv/bin/python benchmarks/fashion_ceiling.py [--seeds 0 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_results

COLUMNS = ["seed", "features", "head", "dims", "cv_mean", "cv_std", "delta_vs_multilayer"]


def embed(ds, size: int, flip: bool, adabn: bool, batch_size: int = 32) -> dict:
    """Pooled Lite0 features of every image: ``g`` (final, global mean), ``s2`` (final, 2x2
    grid), ``st`` (the last three stages, global means)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from dataclasses import replace

    from transfuse.backbones.registry import create_backbone
    from transfuse.fuse.merge.estimate import recompute_batchnorm
    from transfuse.train.loaders import make_loader

    if flip:
        ds = replace(ds, items=[np.ascontiguousarray(a[:, ::-1]) for a in ds.items], _hashes=None)
    bb = create_backbone("bundled:efficientnet_lite0", taps=3, image_size=size).eval()
    if adabn:
        recompute_batchnorm(bb.model, make_loader(ds, bb, train=False, batch_size=batch_size))
    out: dict = {"g": [], "s2": [], "st": []}
    with torch.no_grad():
        for x, _ in make_loader(ds, bb, train=False, batch_size=batch_size):
            final, stages = bb.intermediates(x)
            pooled = bb.model.forward_head(final, pre_logits=True)
            assert torch.allclose(final.mean((2, 3)), pooled, atol=1e-4)  # the probe's own features
            out["g"].append(final.mean((2, 3)).numpy())
            out["s2"].append(F.adaptive_avg_pool2d(final, 2).flatten(1).numpy())
            out["st"].append(torch.cat([s.mean((2, 3)) for s in stages], 1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def cv(X, y, make, folds: int, X_flip=None, train_flip: bool = False, tta: bool = False) -> tuple[float, float]:
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    accs = []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y):
        m = make()
        if train_flip:
            m.fit(np.vstack([X[tr], X_flip[tr]]), np.concatenate([y[tr], y[tr]]))
        else:
            m.fit(X[tr], y[tr])
        p = m.predict_proba(X[te])
        if tta:
            p = (p + m.predict_proba(X_flip[te])) / 2
        accs.append(float((p.argmax(1) == y[te]).mean()))
    return float(np.mean(accs)), float(np.std(accs))


def heads(seed: int) -> dict:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from transfuse.adapt.probe import make_head
    from transfuse.config import HeadConfig

    return {
        "linear, wd 1e-3 (the probe's)": lambda: make_head(HeadConfig(), 10, seed),
        "linear, wd 1e-1": lambda: make_head(HeadConfig(weight_decay=0.1), 10, seed),
        "MLP (256 hidden)": lambda: make_head(HeadConfig(kind="mlp"), 10, seed),
        "RBF SVM, C 10 (scikit-learn)": lambda: make_pipeline(StandardScaler(), SVC(C=10, probability=True,
                                                                                    random_state=seed)),
    }


def run_seed(seed: int, args: argparse.Namespace) -> list[dict]:
    import numpy as np

    from transfuse.data.registry import load_dataset

    ds = load_dataset("fashion_mnist", split="train", max_per_class=args.per_class, seed=seed)
    y = ds.labels
    base = args.sizes[len(args.sizes) // 2] if 224 not in args.sizes else 224
    feats, t = {}, time.time()
    for size in args.sizes:
        feats[size] = embed(ds, size, flip=False, adabn=False)
    flipped = embed(ds, base, flip=True, adabn=False)
    adabn = None if args.no_adabn else embed(ds, base, flip=False, adabn=True)
    print(f"seed {seed}: embedded in {time.time() - t:.0f} s", flush=True)
    H = heads(seed)
    probe = H["linear, wd 1e-3 (the probe's)"]

    def ml(f):  # the multi-layer probe's features: stages then final, as taps: 3 gives them
        return np.hstack([f["st"], f["g"]])

    rows: list[dict] = []

    def add(features: str, head: str, X, **kw) -> None:
        mean, std = cv(X, y, H[head], args.folds, **kw)
        rows.append({"seed": seed, "features": features, "head": head, "dims": X.shape[1],
                     "cv_mean": round(mean, 4), "cv_std": round(std, 4)})
        print(rows[-1], flush=True)

    b = feats[base]
    add(f"multi-layer (taps 3), {base} px: what fit ships", "linear, wd 1e-3 (the probe's)", ml(b))
    add(f"final only, {base} px (linear_probe)", "linear, wd 1e-3 (the probe's)", b["g"])
    add(f"final 2x2 grid, {base} px", "linear, wd 1e-3 (the probe's)", b["s2"])
    add(f"multi-layer + final 2x2 grid, {base} px", "linear, wd 1e-3 (the probe's)", np.hstack([b["st"], b["s2"]]))
    for size in args.sizes:
        if size != base:
            add(f"multi-layer, {size} px", "linear, wd 1e-3 (the probe's)", ml(feats[size]))
    add(f"multi-layer, {'+'.join(map(str, args.sizes))} px concatenated", "linear, wd 1e-3 (the probe's)",
        np.hstack([ml(feats[s]) for s in args.sizes]))
    for name, kw in (("+ flipped training rows", {"train_flip": True}), ("+ flip averaged at prediction", {"tta": True}),
                     ("+ both", {"train_flip": True, "tta": True})):
        add(f"multi-layer, {base} px {name}", "linear, wd 1e-3 (the probe's)", ml(b), X_flip=ml(flipped), **kw)
    for head in H:
        if H[head] is not probe:
            add(f"multi-layer, {base} px", head, ml(b))
    if adabn is not None:
        add(f"multi-layer, {base} px, BatchNorm re-estimated (AdaBN)", "linear, wd 1e-3 (the probe's)", ml(adabn))
    ref = rows[0]["cv_mean"]
    for r in rows:
        r["delta_vs_multilayer"] = round(r["cv_mean"] - ref, 4)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="peers.py --split-seed values")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224, 320])
    ap.add_argument("--no-adabn", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="10 per class, 3 folds, 96/128 px: checks the script runs")
    ap.add_argument("--name", default="fashion_ceiling")
    args = ap.parse_args()
    if args.quick:
        args.per_class, args.folds, args.sizes, args.name = 10, 3, [96, 128], args.name + "_quick"
    import torch

    torch.set_num_threads(args.threads)
    t = time.time()
    rows = [r for seed in args.seeds for r in run_seed(seed, args)]
    extra = {"data": f"Fashion-MNIST train, {args.per_class} per class, the images peers.py --split-seed "
                     f"{'/'.join(map(str, args.seeds))} draws; no test image read",
             "CV": f"{args.folds} stratified folds (scikit-learn, shuffled, random_state 0), mean and SD over folds",
             "wall seconds": round(time.time() - t, 1)}
    print(write_results(args.name, rows, COLUMNS, extra))


if __name__ == "__main__":
    main()
