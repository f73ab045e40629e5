"""Throughput per stage on this machine, for docs/scaling.md.

- decode + preprocess: items/s of the loader alone (PNG decode, resize, normalise; tokenise), what
  feeds an accelerator from the CPU;
- embedding: items/s of ``compute_features`` (decode + preprocess + forward, batch 64, eval mode,
  no cache) for EfficientNet-Lite0 at 224 px on emoji PNGs and MiniLM-L6 on WordNet glosses;
- fine-tuning: optimizer steps/s at batch 32 for the same two backbones (decode + preprocess +
  forward + backward + AdamW step, BatchNorm frozen as in the pipeline), measured in a plain loop:
  the compute of one Lightning ``training_step`` without the Trainer's bookkeeping.

Each row also records the process's CPU seconds (``items_per_cpu_s``: items per second of one
core that the process really got; on a shared machine wall time counts other jobs' time too) and
the load average before it. Merge throughput (GB/s) is measured by ``benchmarks/merge_speed.py`` (results/merge_speed.md).

    python benchmarks/scaling.py [--images 256] [--texts 512] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

from _common import write_results


def _subset(source: str, n: int):
    from transfuse.data.registry import load_dataset

    data = load_dataset(source, None)
    step = max(1, len(data) // n)
    return data.subset(list(range(0, len(data), step))[:n])


def load_rate(bb, data, batch: int = 64) -> dict:
    """Decode + preprocess only (the loader without the model): what feeds a GPU from the CPU."""
    from transfuse.train.loaders import make_loader

    load = [round(x, 2) for x in os.getloadavg()]
    t, c = time.perf_counter(), time.process_time()
    n = sum(len(y) for _, y in make_loader(data, bb, train=False, batch_size=batch, num_workers=0))
    s, cpu = time.perf_counter() - t, time.process_time() - c
    return {"stage": "decode + preprocess", "batch": batch, "items": n, "seconds": s, "cpu_seconds": cpu,
            "items_per_s": n / s, "items_per_cpu_s": n / cpu, "load_before": load}


def embed_rate(bb, data, batch: int = 64) -> dict:
    from transfuse.train.cache import compute_features

    compute_features(bb, data.subset(range(min(8, len(data)))), batch_size=8)  # warm up
    load = [round(x, 2) for x in os.getloadavg()]
    t, c = time.perf_counter(), time.process_time()
    feats = compute_features(bb, data, batch_size=batch)
    s, cpu = time.perf_counter() - t, time.process_time() - c
    return {"stage": "embed", "batch": batch, "items": len(data), "seconds": s, "cpu_seconds": cpu,
            "items_per_s": len(data) / s, "items_per_cpu_s": len(data) / cpu, "feature_dim": feats.shape[1],
            "load_before": load}


def step_rate(bb, data, steps: int, batch: int = 32) -> dict:
    import torch
    import torch.nn.functional as F

    from transfuse.train.finetune import Classifier
    from transfuse.train.loaders import make_loader

    torch.manual_seed(0)
    model = Classifier(bb, len(data.classes), freeze_bn=True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loader = make_loader(data, bb, train=True, batch_size=batch, num_workers=0, seed=0)
    times, cpus, it = [], [], iter(loader)
    load = [round(x, 2) for x in os.getloadavg()]
    for i in range(steps + 1):  # the first step warms up (allocations, lazy init)
        t, c = time.perf_counter(), time.process_time()
        x, y = next(it)
        loss = F.cross_entropy(model(bb.batch_to(x, torch.device("cpu"))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    s, cpu = sum(times), sum(cpus)
    return {"stage": "fine-tune step", "batch": batch, "items": batch * steps, "seconds": s, "cpu_seconds": cpu,
            "steps_per_s": steps / s, "items_per_s": batch * steps / s, "items_per_cpu_s": batch * steps / cpu,
            "load_before": load}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="scaling")
    args = ap.parse_args()
    import torch

    from transfuse.backbones.registry import create_backbone

    torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for name, source, n, opts in (("bundled:efficientnet_lite0", "emoji", args.images, {"image_size": 224}),
                                  ("bundled:minilm_l6", "wordnet", args.texts, {})):
        data = _subset(source, max(n, 32 * (args.steps + 1)))
        bb = create_backbone(name, **opts)
        what = f"{source}, {'224 px' if opts else 'glosses'}"
        rows.append({"backbone": name, "input": what, **load_rate(bb, data.subset(range(n)))})
        print(rows[-1], flush=True)
        r = embed_rate(bb, data.subset(range(n)))
        rows.append({"backbone": name, "input": what, **r})
        print(rows[-1], flush=True)
        r = step_rate(create_backbone(name, **opts), data, args.steps)
        rows.append({"backbone": name, "input": what, **r})
        print(rows[-1], flush=True)
    print(write_results(args.name, rows, ["stage", "backbone", "input", "batch", "items", "seconds", "cpu_seconds",
                                          "items_per_s", "steps_per_s", "items_per_cpu_s", "load_before"],
                        {"threads": args.threads, "load average (1, 5, 15 min) at the start": load_before}))


if __name__ == "__main__":
    main()
