"""Compare transfuse's merged weights with mergekit's on a tiny Llama (CPU, float32).

mergekit is not a transfuse dependency: install it apart, e.g.
    pip install --no-deps --target /tmp/mk mergekit immutables peft accelerate
    PYTHONPATH=/tmp/mk HF_HUB_OFFLINE=1 python benchmarks/merge_vs_mergekit.py
Writes benchmarks/results/merge_vs_mergekit.{json,md}: per method the largest absolute difference
of any merged weight, and the time each tool took (ratios only; the machine is shared). DELLA's
random masks are made the same (mergekit draws transfuse's seeded masks), so the rest is compared.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from transfuse.fuse.merge import merge

# method -> (per-model parameters, global parameters, fine-tuned models, whether to give base_model)
METHODS: dict[str, tuple[dict, dict, int, bool]] = {
    "linear": ({"weight": 1.0}, {}, 3, False),
    "task_arithmetic": ({"weight": 0.7}, {"lambda": 0.8}, 3, True),
    "ties": ({"weight": 1.0, "density": 0.5}, {"normalize": True}, 3, True),
    "breadcrumbs": ({"weight": 1.0, "density": 0.5, "gamma": 0.05}, {}, 3, True),
    "breadcrumbs_ties": ({"weight": 1.0, "density": 0.5, "gamma": 0.05}, {}, 3, True),
    "model_stock": ({}, {}, 3, True),
    "slerp": ({}, {"t": 0.3}, 1, True),
    "nuslerp": ({"weight": 0.4}, {}, 2, True),
    "multislerp": ({"weight": 0.5}, {}, 3, True),
    "karcher": ({}, {}, 3, True),  # mergekit counts base_model as one more input
    "sce": ({}, {"select_topk": 0.5}, 3, True),
    "nearswap": ({}, {"t": 0.01}, 1, True),
    "arcee_fusion": ({}, {}, 1, True),
    "della": ({"weight": 1.0, "density": 0.5, "epsilon": 0.1}, {"lambda": 0.9}, 3, True),
    "della_linear": ({"weight": 0.5, "density": 0.6, "epsilon": 0.2}, {}, 3, True),
    "ram": ({}, {}, 3, True),
    "ramplus_tl": ({}, {"r": 0.3, "alpha": 0.5}, 3, True),
    "passthrough": ({"scale": 0.5}, {}, 1, False),
}
RANDOM = {"della", "della_linear"}  # mergekit made to draw transfuse's masks (see below)


def make_models(root: Path) -> list[str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    paths = []
    for i in range(4):
        m = LlamaForCausalLM(cfg)
        sd = {k: v + (0.02 * torch.randn_like(v) if i else 0) for k, v in base.state_dict().items()}
        m.load_state_dict(sd)
        m.save_pretrained(root / f"m{i}")
        paths.append(str(root / f"m{i}"))
    return paths


def configs(paths: list[str]) -> list[tuple[str, dict]]:
    """(label, mergekit config) per method, then passthrough with slices (a 2 + 1 + 2 layer stack)."""
    out = []
    for name, (per_model, glob, n_models, use_base) in METHODS.items():
        cfg: dict = {"merge_method": name, "dtype": "float32",
                     "models": [{"model": p, "parameters": dict(per_model)}
                                for p in paths[1:1 + n_models]]}
        if use_base:
            cfg["base_model"] = paths[0]
        if glob:
            cfg["parameters"] = dict(glob)
        if not per_model:
            for m in cfg["models"]:
                m.pop("parameters")
        out.append((name, cfg))
    out.append(("passthrough_slices", {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": paths[1], "layer_range": [0, 2]}]},
        {"sources": [{"model": paths[2], "layer_range": [1, 2],
                      "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}, {"value": 1.0}]}}]},
        {"sources": [{"model": paths[3], "layer_range": [0, 2]}]}]}))
    return out


def della_masks() -> contextlib.AbstractContextManager:
    """DELLA's masks are random (mergekit: the global torch RNG; transfuse: seeded per tensor and
    model): make mergekit draw transfuse's masks, as tests/data/make_mergekit_golden.py does."""
    path = Path(__file__).parents[1] / "tests" / "data" / "make_mergekit_golden.py"
    spec = importlib.util.spec_from_file_location("make_mergekit_golden", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.transfuse_della_masks()


def load(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(f))
    return out


def main() -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_models(root)
        for name, cfg in configs(paths):
            t0 = time.perf_counter()
            with della_masks() if name in RANDOM else contextlib.nullcontext():
                run_merge(MergeConfiguration.model_validate(cfg), str(root / f"mk_{name}"),
                          options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False))
            t_mk = time.perf_counter() - t0
            t0 = time.perf_counter()
            merge(cfg, root / f"tf_{name}")
            t_tf = time.perf_counter() - t0
            a, b = load(root / f"mk_{name}"), load(root / f"tf_{name}")
            common = sorted(set(a) & set(b))
            diffs = {k: float((a[k].float() - b[k].float()).abs().max()) for k in common}
            worst = max(diffs, key=diffs.get)
            rows.append({"method": name, "tensors": len(common),
                         "only_in_one": sorted(set(a) ^ set(b)),
                         "max_abs_diff": diffs[worst], "worst_tensor": worst,
                         "tensors_over_1e-5": sum(v > 1e-5 for v in diffs.values()),
                         "mergekit_s": round(t_mk, 3), "transfuse_s": round(t_tf, 3)})
            print(rows[-1])
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    import mergekit

    (out / "merge_vs_mergekit.json").write_text(json.dumps(
        {"machine": platform.platform(), "torch": torch.__version__,
         "mergekit": getattr(mergekit, "__version__", "0.1.5"),
         "date": datetime.date.today().isoformat(), "rows": rows}, indent=2))
    lines = ["| method | tensors | max abs diff | tensors > 1e-5 | mergekit s | transfuse s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['tensors']} | {r['max_abs_diff']:.2e} | {r['tensors_over_1e-5']} "
              f"| {r['mergekit_s']} | {r['transfuse_s']} |" for r in rows]
    (out / "merge_vs_mergekit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
