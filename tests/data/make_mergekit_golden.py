"""Generate tests/data/mergekit_golden.{npz,json}: mergekit 0.1.5's merged tensors for the methods
transfuse took from it later (NuSLERP, Multi-SLERP, Karcher, SCE, NearSwap, Arcee Fusion, DELLA,
RAM, passthrough, also with slices), each run once through mergekit's own ``run_merge`` on a tiny Llama-shaped
checkpoint set (a base and three fine-tunes whose task vectors are partly exactly zero, so RAM's
unique/shared entries and SCE's zero variances occur).

DELLA draws random masks: mergekit from the global torch RNG, transfuse from a generator seeded by
``sha256(seed, tensor name, model name)``. To compare the rest of the method tensor for tensor, this
script makes mergekit draw the same masks: while mergekit merges a tensor, ``torch.bernoulli`` is
replaced by one that uses transfuse's seed for that tensor and model (``blocks.stable_seed``).

mergekit is not a transfuse dependency; install it apart and run from the repository root:
    pip install --no-deps --target /tmp/mk mergekit==0.1.5 immutables peft accelerate
    HF_HUB_OFFLINE=1 PYTHONPATH=src:/tmp/mk python tests/data/make_mergekit_golden.py
"""

from __future__ import annotations

import contextlib
import datetime
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from transfuse.fuse.merge.blocks import stable_seed

HERE = Path(__file__).parent
HIDDEN, INTER, VOCAB = 8, 12, 16
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
         "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 2, "tie_word_embeddings": False,
         "rms_norm_eps": 1e-6, "torch_dtype": "float32"}
MODELS = ["m0", "m1", "m2", "m3"]  # m0 is the base


def shapes() -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN),
                                     "model.norm.weight": (HIDDEN,),
                                     "lm_head.weight": (VOCAB, HIDDEN)}
    for layer in range(LLAMA["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for n in "qkvo":
            s[p + f"self_attn.{n}_proj.weight"] = (HIDDEN, HIDDEN)
        s[p + "mlp.gate_proj.weight"] = (INTER, HIDDEN)
        s[p + "mlp.up_proj.weight"] = (INTER, HIDDEN)
        s[p + "mlp.down_proj.weight"] = (HIDDEN, INTER)
        s[p + "input_layernorm.weight"] = (HIDDEN,)
        s[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    return s


def checkpoints() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(15)
    base = {k: torch.randn(v, generator=g) for k, v in shapes().items()}
    out = {"m0": base}
    for name in MODELS[1:]:
        out[name] = {k: x + 0.1 * torch.randn(x.shape, generator=g)
                     * (torch.rand(x.shape, generator=g) > 0.3) for k, x in base.items()}
    return out


# (case id, mergekit config with model names for paths); every case is float32
CASES: list[tuple[str, dict]] = [
    ("nuslerp_base", {"merge_method": "nuslerp", "base_model": "m0", "models": [
        {"model": "m1", "parameters": {"weight": 1.0}}, {"model": "m2", "parameters": {"weight": 3.0}}]}),
    ("nuslerp_rows", {"merge_method": "nuslerp", "parameters": {"nuslerp_flatten": False},
                      "models": [{"model": "m1", "parameters": {"weight": 2.0}},
                                 {"model": "m2", "parameters": {"weight": 1.0}}]}),
    ("nuslerp_columns", {"merge_method": "nuslerp", "base_model": "m0",
                         "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
                         "models": [{"model": "m2", "parameters": {"weight": 0.4}},
                                    {"model": "m3", "parameters": {"weight": 0.6}}]}),
    ("multislerp_base", {"merge_method": "multislerp", "base_model": "m0", "models": [
        {"model": "m1", "parameters": {"weight": 1.0}}, {"model": "m2", "parameters": {"weight": 2.0}},
        {"model": "m3", "parameters": {"weight": 0.5}}]}),
    ("multislerp_raw", {"merge_method": "multislerp", "parameters": {"normalize_weights": False},
                        "models": [{"model": "m1", "parameters": {"weight": 0.3}},
                                   {"model": "m2", "parameters": {"weight": 0.3}},
                                   {"model": "m3", "parameters": {"weight": 0.5}}]}),
    ("karcher", {"merge_method": "karcher", "models": [{"model": m} for m in ("m1", "m2", "m3")]}),
    ("karcher_base", {"merge_method": "karcher", "base_model": "m0", "parameters": {"max_iter": 20},
                      "models": [{"model": m} for m in ("m1", "m2", "m3")]}),
    ("sce", {"merge_method": "sce", "base_model": "m0",
             "models": [{"model": m} for m in ("m1", "m2", "m3")]}),
    ("sce_topk", {"merge_method": "sce", "base_model": "m0", "parameters": {"select_topk": 0.5},
                  "models": [{"model": m} for m in ("m1", "m2", "m3")]}),
    ("nearswap", {"merge_method": "nearswap", "base_model": "m0", "parameters": {"t": 0.05},
                  "models": [{"model": "m1"}]}),
    ("arcee_fusion", {"merge_method": "arcee_fusion", "base_model": "m0",
                      "models": [{"model": "m2"}]}),
    ("della", {"merge_method": "della", "base_model": "m0", "parameters": {"lambda": 0.9},
               "models": [{"model": "m1", "parameters": {"weight": 1.0, "density": 0.5, "epsilon": 0.1}},
                          {"model": "m2", "parameters": {"weight": 0.5, "density": 0.7, "epsilon": 0.2}},
                          {"model": "m3", "parameters": {"weight": 0.8, "density": 0.4}}]}),
    ("della_linear", {"merge_method": "della_linear", "base_model": "m0",
                      "parameters": {"epsilon": 0.2, "density": 0.5},
                      "models": [{"model": "m1", "parameters": {"weight": 0.6}},
                                 {"model": "m2", "parameters": {"weight": 0.3}},
                                 {"model": "m3", "parameters": {"weight": 0.4}}]}),
    ("ram", {"merge_method": "ram", "base_model": "m0",
             "models": [{"model": m} for m in ("m1", "m2", "m3")]}),
    ("ramplus_tl", {"merge_method": "ramplus_tl", "base_model": "m0",
                    "parameters": {"r": 0.3, "alpha": 0.5},
                    "models": [{"model": m} for m in ("m1", "m2", "m3")]}),
    ("passthrough", {"merge_method": "passthrough", "models": [{"model": "m2", "parameters": {
        "scale": [{"filter": "o_proj", "value": 0.0}, {"filter": "down_proj", "value": 0.5}]}}]}),
    ("passthrough_slices", {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "m1", "layer_range": [0, 1]}]},
        {"sources": [{"model": "m2", "layer_range": [0, 1], "parameters": {
            "scale": [{"filter": "o_proj", "value": 0.0}, {"value": 1.0}]}}]},
        {"sources": [{"model": "m3", "layer_range": [0, 1]}], "parameters": {"scale": 0.5}}]}),
]


def with_paths(cfg: dict, root: Path) -> dict:
    """The case's config with model names replaced by checkpoint folders under ``root``."""
    out = json.loads(json.dumps(cfg))
    if "base_model" in out:
        out["base_model"] = str(root / out["base_model"])
    for m in out.get("models", []) + [src for sl in out.get("slices", []) for src in sl["sources"]]:
        m["model"] = str(root / m["model"])
    out["dtype"] = "float32"
    return out


@contextlib.contextmanager
def transfuse_della_masks():
    """Make mergekit's DELLA draw the masks transfuse draws (same seed per tensor and model)."""
    from mergekit.merge_methods import generalized_task_arithmetic as gta

    original_merge, original_bernoulli = gta.GeneralizedTaskArithmeticMerge.merge_group, torch.bernoulli
    seeds: list[int] = []

    def merge_group(self, group, /, **parameters):
        name = group.metadata.name
        seeds[:] = [stable_seed(0, name, Path(str(e.id.model.path)).name) for e in group.non_base]
        return original_merge(self, group, **parameters)

    def bernoulli(probs, *args, **kwargs):
        if not seeds or args or kwargs:
            return original_bernoulli(probs, *args, **kwargs)
        g = torch.Generator(device="cpu").manual_seed(seeds.pop(0))
        return original_bernoulli(probs.to("cpu", torch.float32), generator=g).to(probs)

    gta.GeneralizedTaskArithmeticMerge.merge_group = merge_group
    torch.bernoulli = bernoulli
    try:
        yield
    finally:
        gta.GeneralizedTaskArithmeticMerge.merge_group = original_merge
        torch.bernoulli = original_bernoulli


def main() -> None:
    import mergekit
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    torch.set_num_threads(1)
    ckpts = checkpoints()
    arrays = {f"{m}/{k}": v.numpy() for m, sd in ckpts.items() for k, v in sd.items()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for m, sd in ckpts.items():
            (root / m).mkdir()
            save_file(sd, root / m / "model.safetensors")
            (root / m / "config.json").write_text(json.dumps(LLAMA))
        layers = {}
        for case, cfg in CASES:
            out = root / f"out_{case}"
            with transfuse_della_masks():
                run_merge(MergeConfiguration.model_validate(with_paths(cfg, root)), str(out),
                          options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False))
            merged: dict[str, torch.Tensor] = {}
            for f in sorted(out.glob("*.safetensors")):
                merged.update(load_file(f))
            arrays.update({f"{case}/{k}": v.numpy() for k, v in merged.items()})
            layers[case] = json.loads((out / "config.json").read_text())["num_hidden_layers"]
    np.savez_compressed(HERE / "mergekit_golden.npz", **arrays)
    meta = {"generator": "tests/data/make_mergekit_golden.py",
            "mergekit": getattr(mergekit, "__version__", "0.1.5"), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "llama_config": LLAMA, "models": MODELS,
            "cases": [{"case": c, "config": cfg, "num_hidden_layers": layers[c]} for c, cfg in CASES]}
    (HERE / "mergekit_golden.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(CASES)} cases, {len(arrays)} arrays -> {HERE / 'mergekit_golden.npz'}")


if __name__ == "__main__":
    main()
