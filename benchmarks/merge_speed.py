"""Merge throughput and memory: synthetic Llama-shaped checkpoints, transfuse vs the I/O floor vs mergekit.

Writes 1 base + N fine-tuned fp16 checkpoints of about --size-gb each (many tensors, 1 GB shards,
a transformers ``config.json`` so mergekit accepts them), then for linear, task arithmetic and TIES
runs, each in its own process: the floor (read every input byte and write the output's bytes,
nothing else), transfuse's merge and mergekit's (if importable, e.g. ``PYTHONPATH=/tmp/mk``; see
merge_vs_mergekit.py). Reports seconds, (bytes read + written) / s, peak RSS and the ratios, all
side by side in one run. The issue's target job is ``--models 4 --size-gb 2``.

Page cache: with ``--cache cold`` (the default) every run starts with the job's input files
evicted from the page cache (``posix_fadvise(DONTNEED)`` on those files only, so other processes'
caches are untouched) and every run's output is flushed to disk and deleted after its clock
stops, so the floor, transfuse and mergekit each read from disk. ``--cache warm`` reads the inputs
once before each run instead (only meaningful when they fit in free memory). The 1-minute load
average before each run is recorded: the machine may be shared.

    HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/mk nice -n 5 .venv/bin/python benchmarks/merge_speed.py --size-gb 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_results

METHODS = {
    "linear": ({"weight": 1.0}, {}),
    "task_arithmetic": ({"weight": 1.0}, {"lambda": 0.5}),
    "ties": ({"weight": 1.0, "density": 0.5}, {"normalize": True}),
}


def llama_shapes(size_gb: float) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A Llama config whose fp16 weights take about ``size_gb`` GB, and its tensor shapes."""
    hidden, inter, vocab = (2048, 5504, 32000) if size_gb >= 1 else (1024, 2752, 8000)
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(1, round((size_gb * 1e9 / 2 - 2 * vocab * hidden) / per_layer))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
              "num_key_value_heads": 16, "vocab_size": vocab, "tie_word_embeddings": False,
              "rms_norm_eps": 1e-5, "torch_dtype": "float16"}
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)})
        shapes.update({p + f"self_attn.{n}_proj.weight": (hidden, hidden) for n in "qkvo"})
        shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter)})
    shapes.update({"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)})
    return config, shapes


def write_model(folder: Path, config: dict, shapes: dict, seed: int, shard_bytes: int = 10**9) -> None:
    """Random fp16 weights (base: seed 0; fine-tunes: base + small noise), 1 GB shards, one shard in memory."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    weight_map, shard, size, n = {}, {}, 0, 0

    def flush() -> None:
        nonlocal shard, size, n
        if shard:
            name = f"model-{n:05d}.safetensors"
            save_file(shard, folder / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard, size, n = {}, 0, n + 1

    for i, (name, shape) in enumerate(shapes.items()):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(shape, generator=g) * 0.02
        if seed:
            x += torch.randn(shape, generator=torch.Generator().manual_seed(1000 * seed + i)) * 0.002
        shard[name] = x.half()
        size += x.numel() * 2
        if size >= shard_bytes:
            flush()
    flush()
    total = sum(os.path.getsize(folder / f) for f in set(weight_map.values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))


FLOOR = """
import sys, time
ins, out, n_out = sys.argv[1:-2], sys.argv[-2], int(sys.argv[-1])
buf = bytearray(1 << 24); view = memoryview(buf)
t = time.perf_counter(); total = 0
for p in ins:
    with open(p, 'rb', buffering=0) as f:
        while (k := f.readinto(buf)):
            total += k
with open(out, 'wb', buffering=0) as f:
    left = n_out
    while left > 0:
        left -= f.write(view[:min(left, len(buf))])
print(time.perf_counter() - t)
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))
"""

TRANSFUSE = """
import sys, time, yaml
from transfuse.fuse.merge import merge
t = time.perf_counter(); merge(yaml.safe_load(open(sys.argv[1])), sys.argv[2]); print(time.perf_counter() - t)
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))
"""

MERGEKIT = """
import sys, time, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
t = time.perf_counter()
run_merge(MergeConfiguration.model_validate(yaml.safe_load(open(sys.argv[1]))), sys.argv[2],
          options=MergeOptions(copy_tokenizer=False, lazy_unpickle=True, low_cpu_memory=False))
print(time.perf_counter() - t)
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))
"""


def run_child(code: str, *args: str) -> tuple[float, float]:
    """Run ``code`` in a fresh interpreter; (seconds it reports, its own peak RSS in GB).

    The peak is the child's ``VmHWM`` after exec, which it prints last: ``ru_maxrss`` from
    ``wait4`` would include this (torch-importing) parent's memory copied at fork.
    """
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    *_, seconds, hwm_kib = proc.stdout.split()
    return float(seconds), int(hwm_kib) * 1024 / 1e9


def files_of(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.safetensors"))


def set_cache(files: list[str], mode: str) -> None:
    """Evict ``files`` from the page cache (cold) or read them through it once (warm)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            if mode == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 1 << 24):
                    pass
        finally:
            os.close(fd)


def flush_and_remove(path: Path) -> None:
    """fsync every file under ``path`` (outside the timed part), then delete it."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    if path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def timed(code: str, inputs: list[str], out: Path, cache: str, *args: str) -> tuple[float, float, float]:
    """(seconds, peak RSS GB, load average before) of one run, the cache prepared as asked."""
    flush_and_remove(out)
    set_cache(inputs, cache)
    load = os.getloadavg()[0]
    s, rss = run_child(code, *args)
    flush_and_remove(out)
    return s, rss, load


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=4, help="fine-tuned models merged (plus a base)")
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--work", default="/tmp/transfuse-merge-speed")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--mergekit-methods", default=",".join(METHODS),
                    help="methods also run with mergekit (its TIES takes minutes per GB on 2 cores)")
    ap.add_argument("--cache", choices=["cold", "warm"], default="cold")
    ap.add_argument("--name", default="merge_speed", help="results/NAME.{json,md}")
    args = ap.parse_args()
    work = Path(args.work)
    config, shapes = llama_shapes(args.size_gb)
    paths = [work / f"m{i}" for i in range(args.models + 1)]
    for i, p in enumerate(paths):
        if not (p / "model.safetensors.index.json").exists():
            write_model(p, config, shapes, seed=i)
    in_bytes = sum(os.path.getsize(f) for p in paths for f in files_of(p))
    try:
        import mergekit  # noqa: F401
        have_mk = True
    except ImportError:
        have_mk = False
    rows = []
    for method in args.methods.split(","):
        per_model, glob = METHODS[method]
        cfg = {"merge_method": method, "dtype": "float16", "parameters": glob,
               "models": [{"model": str(p), "parameters": per_model} for p in paths[1:]]}
        used = paths[1:]
        if method != "linear":
            cfg["base_model"] = str(paths[0])
            used = paths
        read = sum(os.path.getsize(f) for p in used for f in files_of(p))
        cfg_path = work / f"{method}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        out_bytes = sum(os.path.getsize(f) for f in files_of(paths[1]))
        inputs = [f for p in used for f in files_of(p)]
        floor_s, _, load = timed(FLOOR, inputs, work / "floor.bin", args.cache,
                                 *inputs, str(work / "floor.bin"), str(out_bytes))
        gb = (read + out_bytes) / 1e9
        row = {"method": method, "GB read+written": gb, "floor s": floor_s,
               "floor GB/s": gb / floor_s, "load before floor": load}
        out = work / f"tf-{method}"
        tf_s, tf_rss, load = timed(TRANSFUSE, inputs, out, args.cache, str(cfg_path), str(out))
        row.update({"transfuse s": tf_s, "transfuse GB/s": gb / tf_s, "transfuse peak RSS GB": tf_rss,
                    "vs floor": floor_s / tf_s, "load before transfuse": load})
        if have_mk and method in args.mergekit_methods.split(","):
            out = work / f"mk-{method}"
            mk_s, mk_rss, load = timed(MERGEKIT, inputs, out, args.cache, str(cfg_path), str(out))
            row.update({"mergekit s": mk_s, "mergekit peak RSS GB": mk_rss,
                        "mergekit / transfuse time": mk_s / tf_s, "load before mergekit": load})
        rows.append(row)
        print(row, flush=True)
    md = write_results(args.name, rows, ["method", "GB read+written", "floor s", "floor GB/s", "transfuse s",
                                             "transfuse GB/s", "vs floor", "transfuse peak RSS GB",
                                             "mergekit s", "mergekit peak RSS GB", "mergekit / transfuse time"],
                       extra={"job": f"{args.models} fine-tunes + base, {in_bytes / 1e9 / len(paths):.2f} GB "
                                     f"each (fp16, {len(shapes)} tensors, 1 GB shards), dtype float16 out",
                              "cache": ("cold: inputs evicted from the page cache before every run, outputs "
                                        "flushed after the clock stopped" if args.cache == "cold" else
                                        "warm: inputs read once before every run"),
                              "load": "1-minute load average before each run in the JSON rows (2 shared cores)",
                              "transfuse": "default config: sha256 of every input for the model card included",
                              "rss": "peak RSS (VmHWM) of each tool's own process after exec, Python and torch included",
                              "mergekit": "ran" if have_mk else "not importable (set PYTHONPATH=/tmp/mk)"})
    print(md)


if __name__ == "__main__":
    main()
