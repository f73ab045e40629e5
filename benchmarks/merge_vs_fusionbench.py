"""Compare transfuse's merged weights with FusionBench's on a tiny Llama's state dicts (CPU, float32).

FusionBench is not a transfuse dependency; install it apart (its package ``__init__`` imports Hydra,
datasets and accelerate, so those come too; nothing goes into the project's venv):
    python -m pip install --no-deps --target /tmp/fbench fusion-bench==0.2.33 omegaconf==2.4.0 \
        hydra-core==1.3.8 antlr4-python3-runtime==4.9.3 accelerate==1.15.0 datasets==5.2.0 \
        multiprocess==0.70.19 pandas==3.1.1 pyarrow==26.0.1 dill==0.4.1 xxhash==4.1.0 \
        bidict==0.24.1 peft==0.21.2
    PYTHONPATH=/tmp/fbench HF_HUB_OFFLINE=1 python benchmarks/merge_vs_fusionbench.py
Writes benchmarks/results/merge_vs_fusionbench.{json,md}: per method the parameters, the largest
absolute difference of any merged weight, and each tool's time (ratios only; the machine is shared).
FusionBench runs its own algorithm classes (``.run`` on a pool of ``nn.Module``) or state-dict
functions; transfuse runs the registered method (``get_method``) tensor by tensor, as ``merge`` does.
The SVD family (TSV-M, Iso-C, Iso-CTS, WUDI) runs FusionBench's state-dict functions.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from transfuse.fuse.merge import get_method

SD = dict[str, Tensor]
N_FT = 3  # fine-tuned models around one base


def make_models() -> tuple[nn.Module, list[nn.Module]]:
    """A 2-layer Llama base and N_FT fine-tunes (base + 0.02 N(0,1) noise), as merge_vs_mergekit."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).eval()
    fts = []
    for _ in range(N_FT):
        m = copy.deepcopy(base)
        m.load_state_dict({k: v + 0.02 * torch.randn_like(v) for k, v in base.state_dict().items()})
        fts.append(m)
    return base, fts


def sd(m: nn.Module) -> SD:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def tf_merge(name: str, fts: list[SD], base: SD | None = None,
             extras: Callable[[str], dict[str, list[Tensor] | None]] | None = None,
             **params: Any) -> SD:
    """transfuse's registered method applied tensor by tensor (what ``merge`` streams from files)."""
    method = get_method(name)
    return {k: method([f[k] for f in fts], None if base is None else base[k],
                      extras=extras(k) if extras else None, **params) for k in fts[0]}


def flat(s: SD) -> Tensor:
    """FusionBench's TIES vector: every tensor flattened, in sorted-name order, concatenated."""
    return torch.cat([s[k].reshape(-1) for k in sorted(s)])


def unflat(v: Tensor, like: SD) -> SD:
    out, i = {}, 0
    for k in sorted(like):
        n = like[k].numel()
        out[k] = v[i:i + n].view_as(like[k])
        i += n
    return out


def diff(a: SD, b: SD) -> dict[str, Any]:
    common = sorted(set(a) & set(b))
    d = {k: float((a[k].float() - b[k].float()).abs().max()) for k in common}
    worst = max(d, key=d.get)
    return {"tensors": len(common), "max_abs_diff": d[worst], "worst_tensor": worst,
            "tensors_over_1e-5": sum(v > 1e-5 for v in d.values())}


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - t0, 4)


def pool(base: nn.Module | None, fts: list[nn.Module]) -> Any:
    from fusion_bench.modelpool import BaseModelPool

    models = {f"ft{i}": copy.deepcopy(m) for i, m in enumerate(fts)}
    if base is not None:
        models["_pretrained_"] = copy.deepcopy(base)
    return BaseModelPool(models)


def synthetic_stats(base: nn.Module, n_models: int) -> tuple[list[SD], list[dict[str, Tensor]]]:
    """Per model: positive diagonal Fisher values per tensor, and X^T X Gram matrices per Linear.

    The statistics only need to be the same on both sides (this compares the merge arithmetic, not
    the estimation); inputs are 64 rows per model with per-model column scales so Grams differ.
    """
    g = torch.Generator().manual_seed(1)
    fishers, grams = [], []
    for _ in range(n_models):
        fishers.append({k: torch.rand(v.shape, generator=g) ** 2 for k, v in base.state_dict().items()})
        gm = {}
        for name, mod in base.named_modules():
            if isinstance(mod, nn.Linear):
                x = torch.randn(256, mod.in_features, generator=g) * (0.5 + torch.rand(mod.in_features, generator=g))
                gm[name] = x.T @ x
        grams.append(gm)
    return fishers, grams


def run() -> list[dict[str, Any]]:
    from fusion_bench.method.dare.task_arithmetic import DareTaskArithmetic
    from fusion_bench.method.fisher_merging.fisher_merging import (
        merging_with_fisher_weights,
    )
    from fusion_bench.method.model_stock.model_stock import ModelStock
    from fusion_bench.method.regmean.regmean import merging_with_regmean_weights
    from fusion_bench.method.simple_average import SimpleAverageAlgorithm
    from fusion_bench.method.slerp.slerp import slerp_on_state_dicts
    from fusion_bench.method.task_arithmetic.task_arithmetic import (
        TaskArithmeticAlgorithm,
    )
    from fusion_bench.method.ties_merging.ties_merging import TiesMergingAlgorithm

    base_m, ft_m = make_models()
    base, fts = sd(base_m), [sd(m) for m in ft_m]
    rows: list[dict[str, Any]] = []

    def row(method: str, fb_params: str, tf_params: str, fb: SD, tf: SD, t_fb: float, t_tf: float,
            note: str) -> None:
        rows.append({"method": method, "fusionbench": fb_params, "transfuse": tf_params,
                     **diff(fb, tf), "fusionbench_s": t_fb, "transfuse_s": t_tf, "note": note})
        print({k: rows[-1][k] for k in ("method", "max_abs_diff", "fusionbench_s", "transfuse_s")})

    # simple average / uniform soup
    mp = pool(None, ft_m)  # pools are built outside the timings (they deep-copy the modules)
    fb, t_fb = timed(lambda: sd(SimpleAverageAlgorithm(inplace=False).run(mp)))
    tf, t_tf = timed(lambda: tf_merge("linear", fts))
    row("simple average", "SimpleAverageAlgorithm", "linear", fb, tf, t_fb, t_tf,
        "same formula (sum then divide by N)")

    # task arithmetic
    lam = 0.3
    mp = pool(base_m, ft_m)
    fb, t_fb = timed(lambda: sd(TaskArithmeticAlgorithm(scaling_factor=lam, inplace=False).run(mp)))
    tf, t_tf = timed(lambda: tf_merge("task_arithmetic", fts, base, **{"lambda": lam}))
    row("task arithmetic", f"scaling_factor={lam}", f"weight=1, lambda={lam}", fb, tf, t_fb, t_tf,
        "same formula; float rounding of the summation order only")

    # TIES: FusionBench trims by a global top-k over all parameters concatenated
    for func, normalize in (("sum", False), ("mean", True)):
        mp = pool(base_m, ft_m)
        algo = TiesMergingAlgorithm(scaling_factor=lam, threshold=20, remove_keys=[], merge_func=func)
        fb, t_fb = timed(lambda a, m: sd(a.run(m)), algo, mp)
        p = {"density": 0.2, "normalize": normalize, "lambda": lam}
        tf, t_tf = timed(tf_merge, "ties", fts, base, **p)
        row(f"TIES ({func}), per-tensor trim", f"threshold=20, merge_func={func}, scaling_factor={lam}",
            f"density=0.2, normalize={normalize}, lambda={lam}", fb, tf, t_fb, t_tf,
            "trim granularity differs: FusionBench keeps the top 20% of abs(task vector) over the whole "
            "model, transfuse (and mergekit) the top 20% of each tensor")
        ties = get_method("ties")
        n = flat(base).numel()
        k = int(n * 0.2)
        # FusionBench keeps |x| >= the (n - k)-th smallest |x|: k + 1 entries per model, not k
        for dens, what in ((0.2, f"keeps {k} per model, FusionBench {k + 1}"),
                           ((k + 1.5) / n, f"density=(k+1.5)/n keeps k+1={k + 1}, as FusionBench")):
            q = {**p, "density": dens}
            tf, t_tf = timed(lambda m, kw: unflat(m([flat(f) for f in fts], flat(base), **kw), base),
                             ties, q)
            row(f"TIES ({func}), global trim", f"threshold=20, merge_func={func}, scaling_factor={lam}",
                f"ties on the concatenated vector, density={dens:.6g}, normalize={normalize}, "
                f"lambda={lam}", fb, tf, t_fb, t_tf,
                f"same trim, sign election and disjoint {func}; {what}")

    # DARE: random drop; the RNGs differ, so compare the structure of one model's merge
    p_drop = 0.5
    mp = pool(base_m, ft_m[:1])
    torch.manual_seed(0)
    fb, t_fb = timed(lambda: sd(DareTaskArithmetic(scaling_factor=1.0, sparsity_ratio=p_drop,
                                                   only_on_linear_weights=False, rescale=True).run(mp)))
    tf, t_tf = timed(lambda: tf_merge("dare_linear", fts[:1], base, density=1 - p_drop))
    kept_fb = torch.cat([((fb[k] - base[k]) != 0).reshape(-1).float() for k in base])
    kept_tf = torch.cat([((tf[k] - base[k]) != 0).reshape(-1).float() for k in base])
    scale_fb = max(float(((fb[k] - base[k]) / (fts[0][k] - base[k]))[fb[k] != base[k]].sub(1 / (1 - p_drop)).abs().max())
                   for k in base)
    ratios_tf = [((tf[k] - base[k]) / (fts[0][k] - base[k]))[tf[k] != base[k]] for k in base]
    rows.append({"method": "DARE (1 model)", "fusionbench": f"sparsity_ratio={p_drop}, rescale=True",
                 "transfuse": f"dare_linear density={1 - p_drop} (rescale l1)", **diff(fb, tf),
                 "fusionbench_s": t_fb, "transfuse_s": t_tf,
                 "kept_fraction_fusionbench": round(float(kept_fb.mean()), 4),
                 "kept_fraction_transfuse": round(float(kept_tf.mean()), 4),
                 "fusionbench_kept_scale_minus_1_over_density": scale_fb,
                 "transfuse_kept_scale_range": [round(float(min(r.min() for r in ratios_tf)), 4),
                                                round(float(max(r.max() for r in ratios_tf)), 4)],
                 "note": f"kept {float(kept_fb.mean()):.4f} (FusionBench) vs {float(kept_tf.mean()):.4f} "
                         f"(transfuse) of the entries; kept entries scaled by exactly 1/density "
                         f"(FusionBench, max error {scale_fb:.1e}) vs the tensor's l1 ratio "
                         f"{min(float(r.min()) for r in ratios_tf):.3f}..{max(float(r.max()) for r in ratios_tf):.3f} "
                         "(transfuse, as mergekit; 1/density in expectation). "
                         "Random masks from different RNGs: not comparable elementwise"})
    print(rows[-1])

    # Fisher merging (merge arithmetic on the same Fisher diagonals)
    fishers, grams = synthetic_stats(base_m, N_FT)
    pdict = {k: [f[k] for f in fts] for k in base}
    for normalize in (False, True):
        fb, t_fb = timed(merging_with_fisher_weights, pdict, fishers, torch.ones(N_FT),
                         normalize_fisher_weight=normalize, minimal_fisher_weight=1e-6)
        if normalize:  # FusionBench scales model i by 1 / ||F_i|| (over all tensors), normalised
            norms = torch.stack([torch.cat([f[k].reshape(-1) for k in base]).norm() for f in fishers])
            inv = 1 / (norms + 1e-6)
            weight = (inv / inv.sum()).tolist()
        else:
            weight = [1.0] * N_FT
        tf, t_tf = timed(tf_merge, "fisher", fts, extras=lambda k: {"fisher": [f[k] for f in fishers]},
                         weight=weight, min_fisher=1e-6)
        row(f"Fisher (normalize_fisher_weight={normalize})",
            f"normalize_fisher_weight={normalize}, minimal_fisher_weight=1e-6",
            "min_fisher=1e-6, weight=" + ("1/norm(F_i) normalised" if normalize else "1"),
            fb, tf, t_fb, t_tf, "same formula sum w F x / sum w F" +
            ("; FusionBench's global Fisher-norm weighting is transfuse's per-model weight" if normalize else ""))

    # RegMean (Linear weights by Gram matrices, everything else averaged)
    alpha = 0.9

    def gram_of(k: str) -> dict[str, list[Tensor] | None]:
        mod = k.removesuffix(".weight")
        return {"gram": [g[mod] for g in grams] if k.endswith(".weight") and mod in grams[0] else None}

    fb, t_fb = timed(lambda: merging_with_regmean_weights(pdict, grams, reduce_non_diagonal_ratio=alpha))
    tf, t_tf = timed(lambda: tf_merge("regmean", fts, extras=gram_of, alpha=alpha))
    row("RegMean", f"reduce_non_diagonal_ratio={alpha}", f"alpha={alpha}", fb, tf, t_fb, t_tf,
        "same closed form; FusionBench inverts the Gram sum in float32, transfuse solves in float64")

    # Model Stock
    for n in (2, 3):
        mp = pool(base_m, ft_m[:n])
        fb, t_fb = timed(lambda m: sd(ModelStock().run(m)), mp)
        tf, t_tf = timed(tf_merge, "model_stock", fts[:n], base)
        note = "same formula"
        if n == 3:  # check the explanation: redo transfuse's formula with the mean of the angles
            ang = {k: torch.stack([torch.acos(torch.nn.functional.cosine_similarity(
                (fts[i][k] - base[k]).reshape(1, -1), (fts[j][k] - base[k]).reshape(1, -1)).clamp(-1, 1))
                for i, j in ((0, 1), (0, 2), (1, 2))]).mean() for k in base}
            c = {k: torch.cos(a) for k, a in ang.items()}
            alt = {k: (3 * c[k] / (1 + 2 * c[k])) * sum(f[k] for f in fts[:3]) / 3
                   + (1 - 3 * c[k] / (1 + 2 * c[k])) * base[k] for k in base}
            note = ("FusionBench averages the pairwise ANGLES and takes the cosine of the mean; "
                    "transfuse (as mergekit) averages the pairwise cosines. The mean-angle formula "
                    f"reproduces FusionBench to {diff(fb, alt)['max_abs_diff']:.1e}")
        row(f"Model Stock ({n} models)", "ModelStock()", "model_stock", fb, tf, t_fb, t_tf, note)

    # SLERP
    t = 0.3
    fb, t_fb = timed(lambda: slerp_on_state_dicts(t, base, fts[0]))
    tf, t_tf = timed(lambda: tf_merge("slerp", fts[:1], base, t=t))
    row("SLERP", f"t={t}, DOT_THRESHOLD=0.9995", f"t={t}", fb, tf, t_fb, t_tf,
        "same formula; FusionBench computes the angle in float32 torch, transfuse in float64 math")
    svd_family(rows, row, base, fts)
    return rows


def svd_family(rows: list[dict[str, Any]], row: Callable[..., None], base: SD, fts: list[SD]) -> None:
    """TSV-M, Iso-C, Iso-CTS and WUDI: FusionBench's state-dict functions on the task vectors
    (what its algorithm classes call), scaled and added to the base as the classes do."""
    from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import (
        compute_and_sum_svd_mem_reduction,
    )
    from fusion_bench.method.wudi.wudi import wudi_merging

    cpu = torch.device("cpu")
    tvs = [{k: f[k] - base[k] for k in base} for f in fts]

    def plus(tv: SD, scale: float = 1.0) -> SD:
        return {k: base[k] + scale * tv[k].detach() for k in base}

    def float64_note(fb_fn: Callable[[list[SD]], SD], method: str, **params: Any) -> str:
        """How far FusionBench's float32 result is from its own float64 one, and transfuse's
        float64 result from FusionBench's float64 one: the truncated SVDs amplify rounding."""
        tvs64 = [{k: v.double() for k, v in tv.items()} for tv in tvs]
        fb64 = {k: base[k].double() + v for k, v in fb_fn(tvs64).items()}
        fb32 = {k: base[k] + v for k, v in fb_fn([dict(tv) for tv in tvs]).items()}
        tf64 = tf_merge(method, [{k: v.double() for k, v in f.items()} for f in fts],
                        {k: v.double() for k, v in base.items()}, **params)
        return (f"FusionBench float32 vs its float64: {diff(fb32, fb64)['max_abs_diff']:.1e}; "
                f"transfuse float64 vs FusionBench float64: {diff(tf64, fb64)['max_abs_diff']:.1e}")

    alpha = 1.0
    fb, t_fb = timed(lambda: plus(compute_and_sum_svd_mem_reduction(
        [dict(tv) for tv in tvs], accelerator=cpu), alpha))
    tf, t_tf = timed(tf_merge, "tsv_merge", fts, base, alpha=alpha)
    note = float64_note(lambda t: compute_and_sum_svd_mem_reduction(t, accelerator=cpu), "tsv_merge")
    row("TSV-M", f"TaskSingularVectorMerging alpha={alpha}", f"tsv_merge alpha={alpha}",
        fb, tf, t_fb, t_tf, "same algorithm; FusionBench pads the concatenated singular vectors "
        f"with zero columns, transfuse orthogonalises only the kept ones. {note}")
    scale = 1.3
    fb, t_fb = timed(lambda: plus(iso_c([dict(tv) for tv in tvs], accelerator=cpu), scale))
    tf, t_tf = timed(tf_merge, "iso_c", fts, base, alpha=scale)
    note = float64_note(lambda t: iso_c(t, accelerator=cpu), "iso_c")
    row("Iso-C", f"ISO_C_Merge scaling_factor={scale}", f"iso_c alpha={scale}", fb, tf, t_fb, t_tf,
        "same algorithm; FusionBench divides the summed task vectors by T and multiplies back. "
        + note)
    fb, t_fb = timed(lambda: plus(iso_cts([dict(tv) for tv in tvs], 0.8, accelerator=cpu), scale))
    tf, t_tf = timed(tf_merge, "iso_cts", fts, base, alpha=scale, common_space_fraction=0.8)
    note = float64_note(lambda t: iso_cts(t, 0.8, accelerator=cpu), "iso_cts")
    row("Iso-CTS", f"ISO_CTS_Merge scaling_factor={scale}, common_space_fraction=0.8",
        f"iso_cts alpha={scale}, common_space_fraction=0.8", fb, tf, t_fb, t_tf,
        "same algorithm and subspace sizes. " + note + " (both at alpha 1)")
    steps = 300
    fb, t_fb = timed(lambda: plus(wudi_merging([dict(tv) for tv in tvs], accelerator=cpu,
                                               iter_num=steps)))
    tf, t_tf = timed(tf_merge, "wudi", fts, base, iter_num=steps)
    row("WUDI", f"WUDIMerging iter_num={steps} (lr 1e-5)", f"wudi iter_num={steps}, lr=1e-5",
        fb, tf, t_fb, t_tf, "same loss, start and Adam steps; transfuse computes the gradient in "
        "closed form (no autograd), the Gram form on these shapes")


def main() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import write_results

    torch.set_num_threads(1)
    import fusion_bench

    load = os.getloadavg()[0]
    rows = run()
    for r in rows:
        r["max abs diff"] = f"{r['max_abs_diff']:.2e}"
    extra = {"fusion_bench": getattr(fusion_bench, "__version__", "0.2.33"),
             "models": f"tiny Llama (2 layers, hidden 64, vocab 128), base + {N_FT} fine-tunes "
                       "(base + 0.02 N(0,1)), float32, CPU",
             "transfuse side": "get_method(name) tensor by tensor on state dicts (no file I/O)",
             "load average at start (1 min)": round(load, 2),
             "run as": "PYTHONPATH=/tmp/fbench HF_HUB_OFFLINE=1 nice -n 5 .venv/bin/python "
                       "benchmarks/merge_vs_fusionbench.py"}
    print(write_results("merge_vs_fusionbench", rows,
                        ["method", "fusionbench", "transfuse", "max abs diff", "tensors_over_1e-5",
                         "fusionbench_s", "transfuse_s", "note"], extra))


if __name__ == "__main__":
    main()
