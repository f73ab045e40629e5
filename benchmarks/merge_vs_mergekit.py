"""Compare transfuse's merged weights with mergekit's on a tiny Llama (CPU, float32).

mergekit is not a transfuse dependency: install it apart, e.g.
    pip install --no-deps --target /tmp/mk mergekit immutables peft accelerate
    PYTHONPATH=/tmp/mk HF_HUB_OFFLINE=1 python benchmarks/merge_vs_mergekit.py
Writes benchmarks/results/merge_vs_mergekit.{json,md}: per method the largest absolute difference
of any merged weight, and the time each tool took (ratios only; the machine is shared).
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from transfuse.fuse.merge import merge

METHODS = {
    "linear": ({"weight": 1.0}, {}),
    "task_arithmetic": ({"weight": 0.7}, {"lambda": 0.8}),
    "ties": ({"weight": 1.0, "density": 0.5}, {"normalize": True}),
    "breadcrumbs": ({"weight": 1.0, "density": 0.5, "gamma": 0.05}, {}),
    "breadcrumbs_ties": ({"weight": 1.0, "density": 0.5, "gamma": 0.05}, {}),
    "model_stock": ({}, {}),
    "slerp": ({}, {"t": 0.3}),
}


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
        for name, (per_model, glob) in METHODS.items():
            others = paths[1:2] if name == "slerp" else paths[1:]
            cfg = {"merge_method": name, "dtype": "float32",
                   "models": [{"model": p, "parameters": dict(per_model)} for p in others]}
            if name != "linear":
                cfg["base_model"] = paths[0]
            if glob:
                cfg["parameters"] = dict(glob)
            if not per_model:
                for m in cfg["models"]:
                    m.pop("parameters")
            t0 = time.perf_counter()
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
    (out / "merge_vs_mergekit.json").write_text(json.dumps(
        {"machine": platform.platform(), "torch": torch.__version__, "rows": rows}, indent=2))
    lines = ["| method | tensors | max abs diff | tensors > 1e-5 | mergekit s | transfuse s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['tensors']} | {r['max_abs_diff']:.2e} | {r['tensors_over_1e-5']} "
              f"| {r['mergekit_s']} | {r['transfuse_s']} |" for r in rows]
    (out / "merge_vs_mergekit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
