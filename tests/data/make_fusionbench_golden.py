"""Generate tests/data/fusionbench_golden.npz: TSV-M, Iso-C, Iso-CTS and WUDI on small random task
vectors, computed by a transcription of FusionBench's code (state-dict functions, float32).

The transcriptions below follow FusionBench (github.com/tanganke/fusion_bench, the version of
fusion-bench 0.2.33): ``TSVM_utils.compute_and_sum_svd_mem_reduction`` + ``TSVM.run``'s scaling,
``iso_utils.iso_c`` / ``iso_cts`` + ``iso.py``'s scaling, ``wudi.wudi_merging``. They are written
apart from transfuse's methods (which stream one tensor at a time and differ in layout) so the test
checks one against the other. When FusionBench itself is importable (``PYTHONPATH=/tmp/fbench``,
see benchmarks/merge_vs_fusionbench.py), each transcription is also compared with FusionBench's
own function and the largest difference is stored in fusionbench_golden.json.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:/tmp/fbench python tests/data/make_fusionbench_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
SHAPES = {"enc.q.weight": (12, 8), "enc.out.weight": (8, 12), "enc.wide.weight": (6, 20),
          "enc.q.bias": (12,), "conv.weight": (4, 3, 2, 2), "enc.norm.weight": (8,)}
N_TASKS = 3


def fixtures() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1234)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
           for _ in range(N_TASKS)]
    return base, fts


def sub(a, b):
    return {k: a[k] - b[k] for k in a}


# ------------------------------------------------------------------ transcriptions of FusionBench
def fb_tsvm(tvs, alpha=1.0):
    """TSVM_utils.compute_and_sum_svd_mem_reduction, then ``TSVM.run``'s float alpha (a list of
    alphas scales each task vector first: pass pre-scaled tvs and alpha=1)."""
    num_tasks = len(tvs)
    sv_reduction = 1 / num_tasks
    new = {}
    for key in tvs[0]:
        for i, tv in enumerate(tvs):
            vec = tv[key]
            if len(vec.shape) == 2:
                u, s, vh = torch.linalg.svd(vec, full_matrices=False)
                if i == 0:
                    sum_u, sum_s, sum_vh = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
                k = int(s.shape[0] * sv_reduction)
                sum_u[:, i * k:(i + 1) * k] = u[:, :k]
                sum_s[i * k:(i + 1) * k] = s[:k]
                sum_vh[i * k:(i + 1) * k, :] = vh[:k, :]
            else:
                if i == 0:
                    new[key] = vec.clone()
                else:
                    new[key] += (vec - new[key]) / (i + 1)
        if len(tvs[0][key].shape) == 2:
            u_u, _, vh_u = torch.linalg.svd(sum_u, full_matrices=False)
            u_vh, _, vh_vh = torch.linalg.svd(sum_vh, full_matrices=False)
            new[key] = torch.linalg.multi_dot((u_u, vh_u, torch.diag(sum_s), u_vh, vh_vh))
    return {k: v * alpha for k, v in new.items()}


def fb_iso_c(tvs, scaling_factor=1.0):
    new = {}
    for key in tvs[0]:
        ts = [tv[key] for tv in tvs]
        new[key] = sum(ts) / len(ts)
        if len(ts[0].shape) == 2:
            new[key] *= len(ts)
            u, s, v = torch.linalg.svd(new[key], full_matrices=False)
            new[key] = torch.linalg.multi_dot((u, torch.diag(torch.ones_like(s) * s.mean()), v))
    return {k: v * scaling_factor for k, v in new.items()}


def fb_iso_cts(tvs, common_space_fraction, scaling_factor=1.0):
    new = {}
    n = len(tvs)
    for key in tvs[0]:
        shape_ = tvs[0][key].shape
        if len(shape_) != 2:
            for i, tv in enumerate(tvs):
                if i == 0:
                    new[key] = tv[key].clone()
                else:
                    new[key] += (tv[key] - new[key]) / (i + 1)
            continue
        combined_w = sum(tv[key] for tv in tvs)
        common = int(min(shape_) * common_space_fraction)
        specific_total = round((min(shape_) - common) / n) * n
        common = min(shape_) - specific_total
        u, s, v = torch.linalg.svd(combined_w, full_matrices=False)
        cu, cs, cv = u[:, :common], s[:common], v[:common, :]
        per = int((min(shape_) - common) / n)
        for i, tv in enumerate(tvs):
            w = tv[key]
            w_ts = w - cu @ cu.T @ w
            u_ts, s_ts, v_ts = torch.linalg.svd(w_ts, full_matrices=False)
            if i == 0:
                au, as_, av = torch.zeros_like(u_ts), torch.zeros_like(s_ts), torch.zeros_like(v_ts)
            au[:, i * per:(i + 1) * per] = u_ts[:, :per]
            as_[i * per:(i + 1) * per] = s_ts[:per]
            av[i * per:(i + 1) * per, :] = v_ts[:per, :]
        au[:, n * per:n * per + common] = cu
        as_[n * per:n * per + common] = cs
        av[n * per:n * per + common, :] = cv
        uu, _, vu = torch.linalg.svd(au, full_matrices=False)
        uv, _, vv = torch.linalg.svd(av, full_matrices=False)
        as_ = torch.ones_like(as_) * as_.mean()
        new[key] = torch.linalg.multi_dot((uu @ vu, torch.diag(as_), uv @ vv))
    return {k: v * scaling_factor for k, v in new.items()}


def fb_wudi(tvs, iter_num=300, lr=1e-5):
    """wudi.wudi_merging (FusionBench fixes lr at 1e-5; lr is an argument here for a second case)."""
    new = {}
    for key in tvs[0]:
        ts = torch.stack([tv[key] for tv in tvs])
        new[key] = torch.nn.Parameter(torch.sum(ts, dim=0))
        if len(tvs[0][key].shape) == 2:
            opt = torch.optim.Adam([new[key]], lr=lr, weight_decay=0)
            l2 = torch.square(torch.norm(ts.reshape(ts.shape[0], -1), p=2, dim=-1))
            for _ in range(iter_num):
                disturbing = new[key].unsqueeze(0) - ts
                product = torch.matmul(disturbing, ts.transpose(1, 2))
                loss = torch.sum(torch.square(product) / l2.unsqueeze(-1).unsqueeze(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
        else:
            new[key] = new[key] / len(ts)
        new[key] = new[key].detach()
    return new


# ------------------------------------------------------------------ the cases
# (case id, transfuse method, transfuse parameters, transcription)
CASES = [
    ("tsv_merge", "tsv_merge", {}, lambda tvs: fb_tsvm(tvs)),
    ("tsv_merge_alpha", "tsv_merge", {"alpha": 0.7}, lambda tvs: fb_tsvm(tvs, 0.7)),
    ("tsv_merge_weights", "tsv_merge", {"weight": [1.0, 0.5, 2.0]},
     lambda tvs: fb_tsvm([{k: v * a for k, v in tv.items()} for tv, a in zip(tvs, [1.0, 0.5, 2.0])])),
    ("iso_c", "iso_c", {"alpha": 1.3}, lambda tvs: fb_iso_c(tvs, 1.3)),
    ("iso_cts", "iso_cts", {"alpha": 1.5}, lambda tvs: fb_iso_cts(tvs, 0.8, 1.5)),
    ("iso_cts_half", "iso_cts", {"common_space_fraction": 0.5},
     lambda tvs: fb_iso_cts(tvs, 0.5)),
    ("wudi", "wudi", {}, lambda tvs: fb_wudi(tvs)),
    ("wudi_fast", "wudi", {"iter_num": 200, "lr": 1e-3}, lambda tvs: fb_wudi(tvs, 200, 1e-3)),
]


def fusionbench_check(base, fts, tvs) -> dict[str, float]:
    """Largest |transcription - FusionBench| per case, when FusionBench is importable."""
    try:
        from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
        from fusion_bench.method.task_singular_vector.utils.TSVM_utils import (
            compute_and_sum_svd_mem_reduction,
        )
        from fusion_bench.method.wudi.wudi import wudi_merging
    except ImportError:
        return {}

    def worst(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    out = {}
    cpu = torch.device("cpu")
    out["tsv_merge"] = worst(fb_tsvm(tvs), compute_and_sum_svd_mem_reduction(
        [dict(t) for t in tvs], accelerator=cpu))
    out["iso_c"] = worst(fb_iso_c(tvs, 1.3), {k: v * 1.3 for k, v in iso_c(
        [dict(t) for t in tvs], accelerator=cpu).items()})
    out["iso_cts"] = worst(fb_iso_cts(tvs, 0.8, 1.5), {k: v * 1.5 for k, v in iso_cts(
        [dict(t) for t in tvs], 0.8, accelerator=cpu).items()})
    out["wudi"] = worst(fb_wudi(tvs), {k: v.detach() for k, v in wudi_merging(
        [dict(t) for t in tvs], accelerator=cpu).items()})
    return out


def main() -> None:
    torch.set_num_threads(1)
    base, fts = fixtures()
    tvs = [sub(ft, base) for ft in fts]
    arrays = {f"base/{k}": v.numpy() for k, v in base.items()}
    arrays.update({f"model{i}/{k}": v.numpy() for i, ft in enumerate(fts) for k, v in ft.items()})
    cases = []
    for case, method, params, fn in CASES:
        merged_tv = fn([{k: v.clone() for k, v in tv.items()} for tv in tvs])
        arrays.update({f"{case}/{k}": (base[k] + merged_tv[k]).numpy() for k in base})
        cases.append({"case": case, "method": method, "parameters": params})
    np.savez_compressed(HERE / "fusionbench_golden.npz", **arrays)
    meta = {"generator": "tests/data/make_fusionbench_golden.py", "torch": torch.__version__,
            "cases": cases, "transcription_vs_fusionbench_max_abs_diff": fusionbench_check(base, fts, tvs)}
    (HERE / "fusionbench_golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
