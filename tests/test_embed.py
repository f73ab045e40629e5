"""``transfuse embed CONFIG --shard I/N``: two shard processes fill a feature cache with the same
bytes as one process, each item computed once, and a later ``transfuse run`` computes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_digits_folder

from transfuse.errors import UserError
from transfuse.pipeline.embed import Shard, parse_shard, shard_rows


@pytest.mark.parametrize("text, shard", [(None, Shard(0, 1)), ("0/1", Shard(0, 1)), (" 1/3 ", Shard(1, 3)),
                                         ("3/4", Shard(3, 4))])
def test_shard_values(text, shard):
    assert parse_shard(text) == shard


@pytest.mark.parametrize("text, example", [
    ("2/2", "--shard 0/2 and --shard 1/2"), ("4/3", "--shard 0/3 ... --shard 2/3"),
    ("0/0", "--shard 0/2 and --shard 1/2"), ("-1/2", "--shard 0/2 and --shard 1/2"),
    ("1", "--shard 0/2 and --shard 1/2"), ("a/b", "--shard 0/2 and --shard 1/2"),
    ("1/2/3", "--shard 0/2 and --shard 1/2")])
def test_bad_shard_values_are_one_line_errors(text, example):
    with pytest.raises(UserError) as e:
        parse_shard(text)
    assert str(e.value) == (f"--shard {text!r} is not I/N with 0 <= I < N; run one process per shard "
                            f"I = 0 .. N-1, e.g. {example}")


def test_bad_shard_on_the_command_line_is_one_line_before_any_work(tmp_path):
    p = subprocess.run([sys.executable, "-m", "transfuse.cli", "embed", str(tmp_path / "none.yaml"), "--shard", "2/2"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == ("error: --shard '2/2' is not I/N with 0 <= I < N; run one process per shard I = 0 .. N-1, "
                        "e.g. --shard 0/2 and --shard 1/2\n")


def test_shards_are_whole_batches_of_distinct_items():
    hashes = ["a", "b", "a", "c", "d", "e", "b", "f", "g"]  # 7 distinct: batches [a b c] [d e f] [g]
    parts = [shard_rows(hashes, set(), 3, Shard(i, 2), 0) for i in range(2)]
    assert parts == [[0, 1, 3, 8], [4, 5, 7]]
    seen = {"a", "d"}  # in an earlier dataset: new are b c e f g, batches 1 [b c e] and 2 [f g]
    assert shard_rows(hashes, seen, 3, Shard(1, 2), 1) == [1, 3, 5]
    assert seen == {"a", "b", "c", "d", "e", "f", "g"}


def _embed(cfg: Path, cache: Path, *args: str) -> subprocess.Popen:
    # one intra-op thread everywhere: a CPU forward pass with another thread count differs in the
    # last bits, and the byte comparison below is between processes
    env = dict(os.environ, TRANSFUSE_FEATURE_CACHE=str(cache), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("TRANSFUSE_FAULT_KILL_AT", None)
    return subprocess.Popen([sys.executable, "-m", "transfuse.cli", "embed", str(cfg), "--quiet", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _entries(cache: Path) -> dict[str, dict[str, bytes]]:
    """backbone folder -> {item hash: feature bytes}; fails on an item held by two cache files."""
    out: dict[str, dict[str, bytes]] = {}
    for folder in sorted(p for p in cache.iterdir() if p.is_dir()):
        table: dict[str, bytes] = {}
        for shard in sorted(folder.glob("shard-*.npz")):
            with np.load(shard) as z:
                assert z["features"].dtype == np.float32
                for h, f in zip(z["hashes"].tolist(), z["features"]):
                    assert h not in table, f"{h} computed twice ({shard.name})"
                    table[h] = f.tobytes()
        out[folder.name] = table
    return out


def test_two_shards_fill_the_cache_like_one_process_and_run_reads_it(tmp_path):
    import torch
    from safetensors.torch import save_file

    data = write_digits_folder(tmp_path / "digits")  # 36 images
    shutil.copy(next((data / "digit0").glob("*.png")), data / "digit0" / "copy.png")  # same content
    test = write_digits_folder(tmp_path / "test", per_class=2, size=24)  # 6 more, other bytes
    import timm

    torch.manual_seed(0)
    tiny = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "emb", "data": {"source": "folder", "path": str(data), "test_path": str(test)},
        "split": {"folds": 2}, "preprocess": {"image_size": 32},
        "backbones": ["bundled:efficientnet_lite0",
                      {"name": f"file:{tmp_path / 'tiny.safetensors'}", "options": {"arch": "test_efficientnet"}},
                      "pixels"],
        "train": {"embed_batch_size": 8}, "output": {"dir": str(tmp_path / "run")}}))

    # 42 distinct items in batches of 8: the data's 36 in 5 batches (0-4), the test data's 6 in
    # batch 5; shard 0 has batches 0, 2, 4 (8 + 8 + 4 items), shard 1 batches 1, 3, 5 (8 + 8 + 6)
    one = _embed(cfg, tmp_path / "one")
    shards = [_embed(cfg, tmp_path / "sharded", "--shard", f"{i}/2") for i in range(2)]
    outs = [p.communicate(timeout=600) for p in (one, *shards)]
    for p, (out, err) in zip((one, *shards), outs):
        assert p.returncode == 0, err[-3000:]
    tiny_name = f"file:{tmp_path / 'tiny.safetensors'}"
    for name in ("bundled:efficientnet_lite0", tiny_name):
        assert f"{name}: 42 items, 42 computed, 0 already cached (" in outs[0][0]
        assert f"{name} (shard 0/2): 20 items, 20 computed, 0 already cached (" in outs[1][0]
        assert f"{name} (shard 1/2): 22 items, 22 computed, 0 already cached (" in outs[2][0]
    assert "pixels: skipped, a raw estimator: it has no features to cache" in outs[0][0]

    single, sharded = _entries(tmp_path / "one"), _entries(tmp_path / "sharded")
    assert len(sharded) == 2 and sharded.keys() == single.keys()
    for key in single:
        assert len(single[key]) == 42 and sharded[key] == single[key]  # the same bytes, each item once
        # a file per process and dataset: shard 0 holds data only, shard 1 data and test data
        assert len(list((tmp_path / "sharded" / key).glob("shard-*.npz"))) == 3
        assert ((tmp_path / "one" / key / "meta.json").read_bytes()
                == (tmp_path / "sharded" / key / "meta.json").read_bytes())

    # the run finds every feature in the cache: computing one would reach the embed fault point,
    # which kills it, and would add a cache file
    files = sorted((tmp_path / "sharded").rglob("*"))
    env = dict(os.environ, TRANSFUSE_FEATURE_CACHE=str(tmp_path / "sharded"), TRANSFUSE_FAULT_KILL_AT="embed",
               OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "transfuse.cli", "run", str(cfg), "--quiet"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted((tmp_path / "sharded").rglob("*")) == files
    report = yaml.safe_load((tmp_path / "run" / "report.json").read_text())
    names = {c["name"] for c in report["candidates"]}
    assert {"efficientnet_lite0/linear_probe", "fusion/features"} <= names, names
