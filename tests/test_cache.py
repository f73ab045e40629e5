"""The feature cache degrades, never aborts: a read-only, full or damaged cache means features are
computed in memory (once per run) with one warning."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_digits_folder

from transfuse.train import cache as cache_mod
from transfuse.train.cache import FeatureCache


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from transfuse.backbones import create_backbone
    from transfuse.data.registry import load_dataset

    data = load_dataset("folder", str(write_digits_folder(tmp_path_factory.mktemp("d"), per_class=4, size=16)))
    bb = create_backbone("bundled:efficientnet_lite0", image_size=32)
    return bb, data.subset(np.arange(6)), data.subset(np.arange(6, 12))


def _read_only(root: Path, monkeypatch) -> None:
    """Make ``root`` unwritable: by its mode, or (as root, whom modes do not stop) by the error a
    read-only file system gives every write."""
    if os.geteuid() != 0:
        for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
            d.chmod(0o555)
        return

    def refuse(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_mod, "atomic_save_npz", refuse)
    monkeypatch.setattr(cache_mod, "atomic_write_json", refuse)


def test_read_only_cache_computes_new_items_in_memory_with_one_warning(parts, tmp_path, monkeypatch, capsys):
    bb, a, b = parts
    root = tmp_path / "shared"
    want_a = FeatureCache(root).embed(bb, a)  # a shared, pre-filled cache
    want_b = FeatureCache(tmp_path / "other").embed(bb, b)
    _read_only(root, monkeypatch)
    cache = FeatureCache(root)
    got_a = cache.embed(bb, a)
    assert cache.last.n_computed == 0 and np.array_equal(got_a, want_a)  # still read
    got_b = cache.embed(bb, b)
    assert cache.last.n_computed == 6 and np.abs(got_b - want_b).max() < 1e-5
    again = cache.embed(bb, b)  # kept in memory: computed once per run
    assert cache.last.n_computed == 0 and np.array_equal(again, got_b)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and err.count("\n") == 1
    assert f"feature cache {root}: cannot write to it (Read-only file system)" in err
    assert len(list(root.rglob("shard-*.npz"))) == 1  # nothing written


def test_unusable_cache_folder_and_damaged_shard(parts, tmp_path, capsys):
    bb, a, _ = parts
    (tmp_path / "file").write_text("not a folder")
    cache = FeatureCache(tmp_path / "file" / "cache")  # mkdir fails (ENOTDIR) whoever runs it
    assert cache.embed(bb, a).shape == (6, bb.feature_dim) and cache.last.n_computed == 6
    assert "cannot write to it (Not a directory)" in capsys.readouterr().err
    good = FeatureCache(tmp_path / "c")
    want = good.embed(bb, a)
    shard = next((tmp_path / "c").rglob("shard-*.npz"))
    shard.write_bytes(shard.read_bytes()[:100])  # damaged by hand: recomputed, not a crash
    again = FeatureCache(tmp_path / "c")
    assert np.abs(again.embed(bb, a) - want).max() < 1e-5 and again.last.n_computed == 6
    assert f"cannot read {shard.name}" in capsys.readouterr().err


def test_fill_writes_a_file_per_block_and_a_killed_fill_loses_one_block(parts, tmp_path, monkeypatch):
    bb, a, _ = parts  # 6 items: blocks of 2 batches of 2 -> 4 + 2 items
    want = FeatureCache(tmp_path / "one").embed(bb, a, batch_size=2)
    real = cache_mod.compute_features
    calls = []

    def dies_in_block_two(*args, **kw):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process stops in its second block
        return real(*args, **kw)

    monkeypatch.setattr(cache_mod, "compute_features", dies_in_block_two)
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(tmp_path / "c").fill(bb, a, batch_size=2, block_batches=2)
    assert calls == [4, 2] and len(list((tmp_path / "c").rglob("shard-*.npz"))) == 1  # block one kept
    monkeypatch.setattr(cache_mod, "compute_features", real)
    cache = FeatureCache(tmp_path / "c")
    stats = cache.fill(bb, a, batch_size=2, block_batches=2)
    assert (stats.n_items, stats.n_computed) == (6, 2)  # only the lost block
    assert cache.fill(bb, a, batch_size=2, block_batches=2).n_computed == 0
    got = cache.embed(bb, a, batch_size=2)
    assert cache.last.n_computed == 0 and got.tobytes() == want.tobytes()



def test_embedding_stopped_by_the_time_limit_keeps_the_items_it_finished(parts, tmp_path, monkeypatch):
    """Stopped after its second batch (of 2 items), the embedding keeps the first 4 items' features;
    embedding again computes only the other 2, and every feature equals an uninterrupted run's."""
    from transfuse import budget

    bb, a, _ = parts
    whole = FeatureCache(tmp_path / "ref").embed(bb, a, batch_size=2)
    checks = []

    def stop_at_second(where, done, total, started):
        checks.append(done)
        if len(checks) == 2:
            raise budget.TimeLimitReached(where, 60.0)

    cache = FeatureCache(tmp_path / "c")
    with monkeypatch.context() as m:
        m.setattr(budget, "check_projection", stop_at_second)
        with pytest.raises(budget.TimeLimitReached):
            cache.embed(bb, a, batch_size=2)
    assert cache.missing(bb, a) == 2 and cache.missing(bb, a.subset(np.arange(4))) == 0
    again = cache.embed(bb, a, batch_size=2)
    assert cache.last.n_computed == 2
    assert np.abs(again - whole).max() < 1e-5
