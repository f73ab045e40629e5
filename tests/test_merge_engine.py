"""The streaming engine: inputs, shards, dtypes, heads, tied weights, errors, memory bound."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from transfuse.errors import UserError
from transfuse.fuse.merge import get_method, greedy_soup, merge, search_parameters


def _model(seed: int, **extra) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"emb.weight": torch.randn(10, 4, generator=g), "l0.weight": torch.randn(6, 4, generator=g),
          "l0.bias": torch.randn(6, generator=g), "pos_ids": torch.arange(5)}
    sd.update(extra)
    return sd


def _save(sd, path: Path, dtype=None) -> str:
    save_file({k: v.to(dtype) if dtype and v.is_floating_point() else v for k, v in sd.items()}, path)
    return str(path)


def _load_out(out: Path) -> dict[str, torch.Tensor]:
    sd = {}
    for f in sorted(out.glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


def test_merged_tensors_match_the_method_and_shards_round_trip(tmp_path):
    base, a, b = _model(0), _model(1), _model(2)
    cfg = {"merge_method": "ties", "base_model": _save(base, tmp_path / "base.safetensors"),
           "models": [{"model": _save(a, tmp_path / "a.safetensors"), "parameters": {"weight": 1.0}},
                      {"model": _save(b, tmp_path / "b.safetensors"), "parameters": {"weight": 0.5}}],
           "parameters": {"density": 0.5}, "max_shard_size": 100}
    r = merge(cfg, tmp_path / "out")
    out = _load_out(tmp_path / "out")
    ties = get_method("ties")
    for k in ("emb.weight", "l0.weight", "l0.bias"):
        want = ties([a[k], b[k]], base[k], weight=[1.0, 0.5], density=[0.5, 0.5])
        assert torch.equal(out[k], want), k
    assert torch.equal(out["pos_ids"], base["pos_ids"])  # integer tensors copied from the base
    index = json.loads((tmp_path / "out/model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(out) and len(set(index["weight_map"].values())) == len(r.shards) > 1
    assert (r.merged, r.copied) == (3, 1)
    card = (tmp_path / "out/README.md").read_text()
    assert "TIES" in card and "https://arxiv.org/abs/2306.01708" in card and "sha256" in card
    import hashlib
    assert hashlib.sha256((tmp_path / "a.safetensors").read_bytes()).hexdigest() in card
    again = merge(yaml.safe_load((tmp_path / "out/merge.yaml").read_text()), tmp_path / "out2")
    assert again.shards == r.shards and all(torch.equal(v, _load_out(tmp_path / "out2")[k]) for k, v in out.items())


def test_sharded_index_folder_and_transformers_folder_inputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)
    models = []
    for i in range(2):
        torch.manual_seed(i)
        m = transformers.BertModel(cfg)
        m.save_pretrained(tmp_path / f"bert{i}")
        models.append(m)
    # re-shard bert0 by hand: two files + model.safetensors.index.json
    sd = load_file(tmp_path / "bert0/model.safetensors")
    (tmp_path / "bert0/model.safetensors").unlink()
    names = sorted(sd)
    weight_map = {}
    for j, part in enumerate((names[::2], names[1::2])):
        save_file({k: sd[k] for k in part}, tmp_path / f"bert0/model-0000{j + 1}-of-00002.safetensors")
        weight_map.update({k: f"model-0000{j + 1}-of-00002.safetensors" for k in part})
    (tmp_path / "bert0/model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    r = merge({"merge_method": "linear", "models": [str(tmp_path / "bert0"), str(tmp_path / "bert1")]},
              tmp_path / "out")
    merged = transformers.BertModel.from_pretrained(tmp_path / "out")
    sd0, sd1 = models[0].state_dict(), models[1].state_dict()
    for k, v in merged.state_dict().items():
        assert torch.allclose(v, (sd0[k] + sd1[k]) / 2 if v.is_floating_point() else sd0[k], atol=1e-6), k
    assert r.tensors == len(sd) and (tmp_path / "out/config.json").exists()


@pytest.mark.parametrize("out_dtype,want", [(None, torch.bfloat16), ("float16", torch.float16),
                                            ("float32", torch.float32)])
def test_bf16_inputs_are_computed_in_fp32_and_written_in_the_chosen_dtype(tmp_path, out_dtype, want):
    a, b = _model(1), _model(2)
    cfg = {"merge_method": "linear", "models": [
        {"model": _save(a, tmp_path / "a.safetensors", torch.bfloat16), "parameters": {"weight": 1}},
        {"model": _save(b, tmp_path / "b.safetensors", torch.bfloat16), "parameters": {"weight": 3}}]}
    if out_dtype:
        cfg["out_dtype"] = out_dtype
    merge(cfg, tmp_path / "out")
    out = _load_out(tmp_path / "out")["l0.weight"]
    exact = (a["l0.weight"].bfloat16().float() + 3 * b["l0.weight"].bfloat16().float()) / 4
    assert out.dtype == want and torch.equal(out, exact.to(want))


def test_task_heads_are_kept_per_model(tmp_path):
    base = _model(0)
    a = _model(1, **{"head.weight": torch.ones(3, 4), "head.bias": torch.ones(3)})
    b = _model(2, **{"head.weight": 2 * torch.ones(5, 4), "head.bias": 2 * torch.ones(5)})
    cfg = {"merge_method": "task_arithmetic", "base_model": _save(base, tmp_path / "base.safetensors"),
           "models": [{"model": _save(a, tmp_path / "a.safetensors"), "name": "nouns"},
                      {"model": _save(b, tmp_path / "b.safetensors"), "name": "spam"}]}
    with pytest.raises(UserError, match=r"2 tensor\(s\) missing: head.(bias|weight) \(missing in "
                                        r"base_model\); head.* .*heads: auto"):
        merge(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    r = merge({**cfg, "heads": "auto"}, tmp_path / "out")
    out = _load_out(tmp_path / "out")
    assert {k: set(v) for k, v in r.heads.items()} == {"nouns": {"head.weight", "head.bias"},
                                                       "spam": {"head.weight", "head.bias"}}
    assert torch.equal(out["heads.nouns.head.weight"], a["head.weight"])
    assert torch.equal(out["heads.spam.head.bias"], b["head.bias"])
    assert "head.weight" not in out
    assert torch.allclose(out["l0.weight"], a["l0.weight"] + b["l0.weight"] - base["l0.weight"], atol=1e-6)
    # same-shaped heads of different tasks: declared by prefix
    c = _model(3, **{"head.weight": 3 * torch.ones(3, 4), "head.bias": torch.ones(3)})
    cfg2 = {"merge_method": "linear", "heads": ["head"], "models": [
        {"model": _save(a, tmp_path / "a.safetensors"), "name": "t1"},
        {"model": _save(c, tmp_path / "c.safetensors"), "name": "t2"}]}
    merge(cfg2, tmp_path / "out2")
    assert torch.equal(_load_out(tmp_path / "out2")["heads.t2.head.weight"], c["head.weight"])
    assert json.loads((tmp_path / "out2/heads.json").read_text())["t1"]["head.bias"] == "heads.t1.head.bias"


def test_tied_weights_are_read_through_their_source(tmp_path):
    a = _model(1)  # tied: stores emb.weight only
    b = _model(2, **{"out.weight": torch.randn(10, 4)})
    cfg = {"merge_method": "linear", "tied": {"out.weight": "emb.weight"},
           "models": [_save(a, tmp_path / "a.safetensors"), _save(b, tmp_path / "b.safetensors")]}
    merge(cfg, tmp_path / "out")
    out = _load_out(tmp_path / "out")
    assert torch.allclose(out["out.weight"], (a["emb.weight"] + b["out.weight"]) / 2)
    with pytest.raises(UserError, match=r"out.weight \(missing in a\)"):
        merge({k: v for k, v in cfg.items() if k != "tied"}, tmp_path / "out3")


def test_every_mismatch_is_listed_in_one_line(tmp_path):
    a = _model(1)
    b = {"emb.weight": torch.zeros(11, 4), "l0.weight": torch.zeros(6, 5), "pos_ids": torch.arange(5),
         "extra": torch.zeros(1)}
    cfg = {"merge_method": "linear", "models": [_save(a, tmp_path / "a.safetensors"),
                                                _save(b, tmp_path / "b.safetensors")]}
    with pytest.raises(UserError) as e:
        merge(cfg, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("l0.bias (missing in b)", "extra (missing in a)", "emb.weight [10, 4] vs [11, 4]",
                 "l0.weight [6, 4] vs [6, 5]"):
        assert part in msg


def test_nan_is_named_and_no_partial_output_is_left(tmp_path):
    a, b = _model(1), _model(2)
    b["l0.bias"][3] = float("nan")
    cfg = {"merge_method": "linear", "models": [_save(a, tmp_path / "a.safetensors"),
                                                _save(b, tmp_path / "b.safetensors")]}
    with pytest.raises(UserError, match=r"tensor 'l0.bias' of b contains NaN or inf"):
        merge(cfg, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_pickle_checkpoints_are_refused(tmp_path):
    torch.save(_model(1), tmp_path / "m.pt")
    (tmp_path / "folder").mkdir()
    torch.save(_model(1), tmp_path / "folder/pytorch_model.bin")
    for ref in (tmp_path / "m.pt", tmp_path / "folder"):
        with pytest.raises(UserError, match="pickle checkpoints are refused"):
            merge({"merge_method": "linear", "models": [str(ref)]}, tmp_path / "out")


def test_output_folder_is_not_overwritten_silently(tmp_path):
    cfg = {"merge_method": "linear", "models": [_save(_model(1), tmp_path / "a.safetensors")]}
    merge(cfg, tmp_path / "out")
    with pytest.raises(UserError, match="not empty"):
        merge(cfg, tmp_path / "out")
    merge(cfg, tmp_path / "out", overwrite=True)


def test_method_arity_and_base_errors(tmp_path):
    ms = [_save(_model(i), tmp_path / f"m{i}.safetensors") for i in range(3)]
    with pytest.raises(UserError, match="'slerp' takes exactly 1 model"):
        merge({"merge_method": "slerp", "base_model": ms[0], "models": ms[1:],
               "parameters": {"t": 0.5}}, tmp_path / "o")
    with pytest.raises(UserError, match="'ties' needs base_model"):
        merge({"merge_method": "ties", "models": ms}, tmp_path / "o")
    # the base listed among the models is not a task vector (as in mergekit)
    r = merge({"merge_method": "slerp", "base_model": ms[0], "models": ms[:2],
               "parameters": {"t": [{"filter": "l0", "value": 1.0}, {"value": 0.0}]}}, tmp_path / "o")
    out = _load_out(tmp_path / "o")
    assert torch.equal(out["l0.weight"], _model(1)["l0.weight"])  # t = 1 on l0.*
    assert torch.equal(out["emb.weight"], _model(0)["emb.weight"])  # t = 0 elsewhere
    assert r.merged == 3


def test_fisher_and_regmean_read_their_extra_files(tmp_path):
    a, b = _model(1), _model(2)
    fa = {k: torch.ones_like(v) for k, v in a.items() if v.is_floating_point()}
    fb = {k: 3 * torch.ones_like(v) for k, v in b.items() if v.is_floating_point()}
    cfg = {"merge_method": "fisher", "parameters": {"min_fisher": 0.0}, "models": [
        {"model": _save(a, tmp_path / "a.safetensors"), "fisher": _save(fa, tmp_path / "fa.safetensors")},
        {"model": _save(b, tmp_path / "b.safetensors"), "fisher": _save(fb, tmp_path / "fb.safetensors")}]}
    merge(cfg, tmp_path / "out")
    assert torch.allclose(_load_out(tmp_path / "out")["l0.weight"], (a["l0.weight"] + 3 * b["l0.weight"]) / 4)
    ga, gb = {"l0": torch.eye(4)}, {"l0": torch.eye(4)}  # keyed by module name
    cfg = {"merge_method": "regmean", "models": [
        {"model": str(tmp_path / "a.safetensors"), "gram": _save(ga, tmp_path / "ga.safetensors")},
        {"model": str(tmp_path / "b.safetensors"), "gram": _save(gb, tmp_path / "gb.safetensors")}]}
    merge(cfg, tmp_path / "out2")
    assert torch.allclose(_load_out(tmp_path / "out2")["l0.weight"], (a["l0.weight"] + b["l0.weight"]) / 2, atol=1e-6)


def test_greedy_soup_keeps_a_model_only_if_the_score_does_not_drop(tmp_path):
    ms = [_save({"w": torch.tensor([v])}, tmp_path / f"m{i}.safetensors") for i, v in enumerate([0.0, 2.0, 10.0])]
    cfg = {"merge_method": "greedy_soup", "models": ms}

    def evaluate(sd):  # best at w = 1
        return -abs(float(sd["w"]) - 1.0)

    soup = greedy_soup(cfg, evaluate)
    assert soup.kept == ["m0", "m1"] and soup.scores == {"m0": -1.0, "m1": -1.0, "m2": -9.0}
    assert [h[2] for h in soup.history] == [True, True, False]
    with pytest.raises(UserError, match="needs an evaluate callback"):
        merge(cfg, tmp_path / "out")
    r = merge(cfg, tmp_path / "out", evaluate=evaluate)
    assert torch.equal(_load_out(tmp_path / "out")["w"], torch.tensor([1.0]))
    assert r.scores["m2"] == -9.0 and "greedy soup kept m0, m1" in (tmp_path / "out/README.md").read_text()


def test_greedy_soup_uses_known_scores_and_evaluates_only_the_rest(tmp_path):
    ms = [_save({"w": torch.tensor([v])}, tmp_path / f"m{i}.safetensors") for i, v in enumerate([0.0, 2.0, 10.0])]
    seen = []

    def evaluate(sd):
        seen.append(float(sd["w"]))
        return -abs(float(sd["w"]) - 1.0)

    # m2's known score puts it first: the soup starts from it, and m0 alone is never evaluated
    soup = greedy_soup({"merge_method": "greedy_soup", "models": ms}, evaluate, scores={"m0": -1.0, "m2": 5.0})
    assert soup.scores == {"m0": -1.0, "m1": -1.0, "m2": 5.0} and soup.kept == ["m2"]
    assert seen == [2.0, 5.0, 6.0]  # m1 alone; then m2+m0, m2+m1 (ties keep config order): both refused


def test_soup_ships_what_half_of_the_folds_kept():
    from transfuse.fuse.soups import final_kept

    names = ["a/finetune", "a/lp_ft", "a/x"]
    assert final_kept([["a/lp_ft"], ["a/lp_ft", "a/finetune"], ["a/lp_ft"]], names) == ["a/lp_ft"]
    assert final_kept([["a/lp_ft"], ["a/finetune", "a/lp_ft"]], names) == ["a/finetune", "a/lp_ft"]  # 1 of 2: kept
    # none kept by half the folds: the one kept most often (a tie goes to the earlier name)
    assert final_kept([["a/x"], ["a/lp_ft"], ["a/finetune"], ["a/x"], ["a/lp_ft"]], names) == ["a/lp_ft"]


def test_search_parameters_hook(tmp_path):
    base = _save({"w": torch.tensor([0.0])}, tmp_path / "base.safetensors")
    ms = [_save({"w": torch.tensor([v])}, tmp_path / f"m{i}.safetensors") for i, v in enumerate([1.0, 3.0])]
    cfg = {"merge_method": "task_arithmetic", "base_model": base, "models": ms}
    res = search_parameters(cfg, {"lambda": [0.25, 0.5, 1.0]},
                            lambda path: -abs(float(_load_out(path)["w"]) - 2.0))
    assert res.best == {"lambda": 0.5} and res.best_score == 0.0 and len(res.trials) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_gives_the_cpu_result(tmp_path):
    base, a, b = _model(0), _model(1), _model(2)
    cfg = {"merge_method": "dare_ties", "base_model": _save(base, tmp_path / "base.safetensors"),
           "models": [_save(a, tmp_path / "a.safetensors"), _save(b, tmp_path / "b.safetensors")],
           "parameters": {"density": 0.5}}
    merge({**cfg, "device": "cpu"}, tmp_path / "cpu")
    r = merge({**cfg, "device": "cuda"}, tmp_path / "gpu")
    assert r.device.startswith("cuda")
    cpu, gpu = _load_out(tmp_path / "cpu"), _load_out(tmp_path / "gpu")
    assert all(torch.allclose(cpu[k], gpu[k], atol=1e-5) for k in cpu)


MEMORY_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)  # one allocator arena: the measurement is about tensors, not threads
    from transfuse.fuse.merge import merge
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    folder = sys.argv[1]
    cfg = {"merge_method": "task_arithmetic", "base_model": f"{folder}/m0.safetensors",
           "models": [f"{folder}/m{i}.safetensors" for i in (1, 2, 3)],
           "max_shard_size": "16MB", "hash_inputs": False}
    merge({**cfg, "models": cfg["models"][:1]}, f"{folder}/warm")  # warm up lazy imports, allocator
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM)
    before = status("VmRSS:")
    r = merge(cfg, f"{folder}/out")
    print(before, status("VmHWM:"), r.bytes_read, r.bytes_written)
""")


def _peak_growth(folder: Path, n: int, numel: int) -> int:
    """Peak RSS growth of a 3-model task-arithmetic merge of ``n`` fp16 tensors of ``numel``."""
    folder.mkdir()
    for m in range(4):
        g = torch.Generator().manual_seed(m)
        save_file({f"layer.{i}.weight": torch.randn(numel, generator=g).half() for i in range(n)},
                  folder / f"m{m}.safetensors")
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder)], capture_output=True, check=False,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before, peak, read, written = map(int, proc.stdout.split())
    assert read == 4 * n * numel * 2 and written >= n * numel * 2
    return peak - before


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_is_bounded_whatever_the_tensor_size(tmp_path):
    # the same 4 x 64 MiB of fp16 weights as 32 tensors of 1 MiB, then as 2 tensors of 32 MiB:
    # a whole-tensor engine holds 4 inputs in float32 plus the stacked task vectors of one name
    # (~450 MiB for the big tensors); the block-wise engine holds a few blocks of 256 Ki elements
    # and its 16 MiB read-ahead, so memory follows neither the tensor nor the model
    small = _peak_growth(tmp_path / "small", 32, 512 * 1024)
    big = _peak_growth(tmp_path / "big", 2, 16 * 1024 * 1024)
    # peak RSS also counts the input file pages the reader touched (reclaimable, but in VmHWM), up
    # to one name's 4 x 32 MiB here: measured on 2 cores, small 14-30 MiB and big 36-57 MiB (57.4
    # vs 25.3 failed a 32 MiB margin in a fresh-clone run). The bounds sit at about a quarter of what a
    # whole-tensor engine takes (~450 MiB for the big tensors, ~400 above the small case)
    assert big < 128 * 2**20, f"peak grew by {big / 2**20:.1f} MiB with 32 MiB tensors"
    assert big < small + 96 * 2**20, f"{big / 2**20:.1f} MiB vs {small / 2**20:.1f} MiB"


def _layered(seed: int, dtype=torch.float16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"emb.weight": (torch.randn(300, 70, generator=g) * 0.02).to(dtype),
            "blk.weight": (torch.randn(5, 7, 11, generator=g) * 0.02).to(dtype),
            "norm.weight": torch.randn(13, generator=g).to(dtype),
            "bn.running_mean": torch.randn(13, generator=g).to(dtype),
            "bn.running_var": torch.rand(13, generator=g).to(dtype) + 0.5,
            "bn.num_batches_tracked": torch.tensor(100 + seed)}


@pytest.mark.parametrize("method,params", [
    ("linear", {"weight": [0.3, 1.1, 0.6]}),
    ("task_arithmetic", {"weight": [0.7, -0.2, 1.3], "lambda": 0.8, "normalize": True}),
    ("ties", {"weight": [1.0, 0.5, 0.8], "density": 0.4}),
    ("ram", {"epsilon": 0.01}),
    ("nearswap", {"t": 0.01}),
    ("passthrough", {"scale": [0.5]}),
])
def test_blockwise_results_equal_whole_tensor_results(tmp_path, method, params):
    base, *ms = [_layered(s) for s in range(4)]
    ms = ms[:get_method(method).max_models or 3]
    uses_base = get_method(method).base != "none"
    per_model = {k: v for k, v in params.items() if isinstance(v, list)}
    glob = {k: v for k, v in params.items() if not isinstance(v, list)}
    cfg = {"merge_method": method, "dtype": "float16", "parameters": glob,
           "models": [{"model": _save(m, tmp_path / f"m{i}.safetensors"),
                       "parameters": {k: v[i] for k, v in per_model.items()}} for i, m in enumerate(ms)]}
    if uses_base:
        cfg["base_model"] = _save(base, tmp_path / "base.safetensors")
    merge(cfg, tmp_path / "blocks", chunk_elems=97)  # blocks that cut rows and tensors unevenly
    merge(cfg, tmp_path / "whole", chunk_elems=10**9)
    blocks, whole = _load_out(tmp_path / "blocks"), _load_out(tmp_path / "whole")
    fn = get_method(method)
    kw = {k: v for k, v in params.items()}
    for k in ("emb.weight", "blk.weight", "norm.weight"):
        xs = [m[k].float() for m in ms]
        want = fn(xs, base[k].float() if uses_base else None, **kw).half()
        assert torch.equal(whole[k], want), k  # the whole-tensor run is the method itself
        assert torch.equal(blocks[k], want), k  # and blocks are bit-identical to it
    # BatchNorm statistics: uniform average of the merged models (not task-vector merged);
    # the integer counter comes from the base model (the first model without a base)
    for k in ("bn.running_mean", "bn.running_var"):
        want = (sum(m[k].float() for m in ms) / len(ms)).half()
        assert torch.equal(blocks[k], want), k
    first = base if uses_base else ms[0]
    assert int(blocks["bn.num_batches_tracked"]) == int(first["bn.num_batches_tracked"])


def test_bn_stats_method_merges_them_like_weights(tmp_path):
    base, a, b = _layered(0, torch.float32), _layered(1, torch.float32), _layered(2, torch.float32)
    cfg = {"merge_method": "task_arithmetic", "base_model": _save(base, tmp_path / "base.safetensors"),
           "models": [_save(a, tmp_path / "a.safetensors"), _save(b, tmp_path / "b.safetensors")],
           "parameters": {"lambda": 0.5}}
    out = _load_out(Path(merge(cfg, tmp_path / "out", bn_stats="method").out_dir))
    k = "bn.running_var"
    assert torch.allclose(out[k], base[k] + 0.5 * ((a[k] - base[k]) + (b[k] - base[k])))
    # the same choice from the YAML key, kept in the written merge.yaml
    out_yaml = _load_out(Path(merge({**cfg, "bn_stats": "method"}, tmp_path / "out2").out_dir))
    assert torch.equal(out_yaml[k], out[k])
    assert "bn_stats: method" in (tmp_path / "out2/merge.yaml").read_text()
    with pytest.raises(UserError, match="bn_stats"):
        merge({**cfg, "bn_stats": "median"}, tmp_path / "out3")


def test_card_hashes_equal_hashlib_whatever_the_read_order(tmp_path):
    import hashlib
    # m1 stores its tensors in the reverse order of the base: reads jump backwards in its file
    base = {f"t{i}": torch.full((1000 + i,), float(i)) for i in range(6)}
    rev = {f"t{i}": torch.full((1000 + i,), float(i) + 1) for i in reversed(range(6))}
    paths = [_save(base, tmp_path / "base.safetensors")]
    from safetensors.torch import save as st_save
    raw = st_save(rev)
    (tmp_path / "m1.safetensors").write_bytes(raw)
    paths.append(str(tmp_path / "m1.safetensors"))
    cfg = {"merge_method": "task_arithmetic", "base_model": paths[0], "models": paths[1:2]}
    merge(cfg, tmp_path / "out", chunk_elems=300)
    card = (tmp_path / "out/README.md").read_text()
    for p in paths:
        assert hashlib.sha256(Path(p).read_bytes()).hexdigest() in card, p


def test_nan_in_a_late_block_is_named_and_nothing_is_left(tmp_path):
    a = {"w": torch.zeros(5000), "v": torch.ones(10)}
    b = {"w": torch.zeros(5000), "v": torch.ones(10)}
    b["w"][4321] = float("inf")
    cfg = {"merge_method": "linear", "models": [_save(a, tmp_path / "a.safetensors"),
                                                _save(b, tmp_path / "b.safetensors")]}
    with pytest.raises(UserError, match=r"b\.safetensors: tensor 'w' of b.* NaN or inf"):
        merge(cfg, tmp_path / "out", chunk_elems=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_finite_check_survives_float32_sum_overflow(tmp_path):
    big = torch.full((4096,), 3e38)  # every entry finite; their float32 sum overflows
    cfg = {"merge_method": "linear",
           "models": [{"model": _save({"w": big}, tmp_path / "a.safetensors"), "parameters": {"weight": 1.0}},
                      {"model": _save({"w": -big}, tmp_path / "b.safetensors"), "parameters": {"weight": 0.0}}]}
    merge(cfg, tmp_path / "out")
    assert torch.equal(_load_out(tmp_path / "out")["w"], big)
