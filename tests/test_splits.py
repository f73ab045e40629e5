"""Stratified splits: proportions, determinism, duplicates, small classes, JSON round trip."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from transfuse.data.base import Dataset
from transfuse.data.splits import Splits, make_splits
from transfuse.errors import UserError


def make_ds(counts: dict[str, int], start: int = 0, dup_of: dict[int, int] | None = None) -> Dataset:
    """A dataset of distinct tiny arrays; ``dup_of[i] = j`` makes item i a copy of item j."""
    classes = list(counts)
    labels = np.repeat(np.arange(len(classes)), list(counts.values()))
    items = [np.array([start + i], dtype=np.int64) for i in range(len(labels))]
    for i, j in (dup_of or {}).items():
        items[i] = items[j].copy()
    return Dataset("image", items, labels, classes, [f"x{start + i}" for i in range(len(labels))])


def check_partition(s: Splits, n_items: int) -> None:
    train = set(s.train_idx.tolist())
    test = set() if s.external_test else set(s.test_idx.tolist())  # external: another dataset's indices
    assert not train & test
    vals = [set(va.tolist()) for _, va in s.folds]
    assert set().union(*vals) == train and sum(map(len, vals)) == len(train)  # each item validated once
    for tr, va in s.folds:
        assert set(tr.tolist()) == train - set(va.tolist())
    assert max(train | test) < n_items


def test_stratified_proportions():
    ds = make_ds({"a": 50, "b": 30, "c": 20})
    s = make_splits(ds, folds=5, test_size=0.2, seed=0)
    check_partition(s, len(ds))
    assert Counter(ds.labels[s.test_idx].tolist()) == {0: 10, 1: 6, 2: 4}
    for _, va in s.folds:  # train part is 40/24/16: each class split evenly over 5 folds
        c = Counter(ds.labels[va].tolist())
        assert c[0] == 8 and c[1] in (4, 5) and c[2] in (3, 4)
    assert Counter(ds.labels[s.train_idx].tolist()) == {0: 40, 1: 24, 2: 16}
    assert s.quarantined == [] and s.dropped_classes == [] and s.warnings == []


def test_deterministic_by_seed():
    ds = make_ds({"a": 40, "b": 40})
    one, two = make_splits(ds, seed=7), make_splits(ds, seed=7)
    assert one.to_json() == two.to_json()
    other = make_splits(ds, seed=8)
    assert other.test_idx.tolist() != one.test_idx.tolist()


def test_duplicates_quarantined_before_splitting():
    # items 5 and 40 copy item 0 (40 with another label); 45 copies 44
    ds = make_ds({"a": 30, "b": 30}, dup_of={5: 0, 40: 0, 45: 44})
    s = make_splits(ds, folds=3, test_size=0.25, seed=0)
    reasons = {q.path: q.reason for q in s.quarantined}
    assert reasons == {
        "x5": "exact duplicate of x0",
        "x40": "exact duplicate of x0 (labelled 'a' there, 'b' here)",
        "x45": "exact duplicate of x44",
    }
    used = set(s.train_idx.tolist()) | set(s.test_idx.tolist())
    assert used == set(range(60)) - {5, 40, 45}
    check_partition(s, len(ds))
    assert len(ds.quarantined) == 0  # the caller's dataset is not changed


def test_external_test_set_dedup():
    train = make_ds({"a": 10, "b": 10})
    test = make_ds({"a": 4, "b": 4}, start=100)
    test.items[1] = train.items[3].copy()  # a copy of a training item
    test.items[6] = test.items[5].copy()  # a copy inside the test set
    s = make_splits(train, folds=5, seed=0, test_dataset=test)
    assert s.external_test and s.train_idx.tolist() == list(range(20))
    assert s.test_idx.tolist() == [0, 2, 3, 4, 5, 7]
    assert [(q.path, q.reason) for q in s.test_quarantined] == [
        ("x101", "exact duplicate of training item x3"),
        ("x106", "exact duplicate of test item x105"),
    ]
    check_partition(s, len(train))
    mismatched = make_ds({"a": 4, "z": 4}, start=200)
    with pytest.raises(UserError, match=r"test data's classes \['a', 'z'\] differ"):
        make_splits(train, test_dataset=mismatched)


def test_small_classes_dropped_or_warned():
    ds = make_ds({"big": 40, "tiny": 2, "small": 3})
    s = make_splits(ds, folds=5, test_size=0.2, seed=0)
    assert s.dropped_classes == ["tiny"]
    tiny = np.flatnonzero(ds.labels == 1).tolist()
    assert sorted(q.path for q in s.quarantined) == [f"x{i}" for i in tiny]
    assert "fewer than the 3 needed for stratified splits" in s.quarantined[0].reason
    assert not set(tiny) & (set(s.train_idx.tolist()) | set(s.test_idx.tolist()))
    n_small_train = int((ds.labels[s.train_idx] == 2).sum())
    assert n_small_train in (2, 3)
    assert s.warnings == [
        f"class 'small' has {n_small_train} training items, fewer than 5 folds: "
        f"it is missing from {5 - n_small_train} validation folds"
    ]
    assert sum(int((ds.labels[va] == 2).any()) for _, va in s.folds) == n_small_train
    # without a test split a class of 2 is enough
    s0 = make_splits(ds, folds=5, test_size=0, seed=0)
    assert s0.dropped_classes == [] and len(s0.test_idx) == 0


def test_json_round_trip(tmp_path):
    ds = make_ds({"a": 20, "b": 13}, dup_of={3: 2})
    s = make_splits(ds, folds=4, test_size=5, seed=3)
    assert len(s.test_idx) == 5
    back = Splits.from_json(json.loads(json.dumps(s.to_json())))
    assert back.to_json() == s.to_json()
    for (a, b), (c, d) in zip(s.folds, back.folds):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    s.save(tmp_path / "splits.json")
    loaded = Splits.load(tmp_path / "splits.json")
    np.testing.assert_array_equal(loaded.test_idx, s.test_idx)
    assert loaded.quarantined == s.quarantined and loaded.n_folds == 4
    loaded.check_matches(ds)
    with pytest.raises(UserError, match="made for different data"):
        loaded.check_matches(make_ds({"a": 20, "b": 13}, start=1))


def test_errors():
    ds = make_ds({"a": 10, "b": 10})
    with pytest.raises(UserError, match="splits.folds must be an integer >= 2, got 1"):
        make_splits(ds, folds=1)
    with pytest.raises(UserError, match="splits.test_size must be a fraction"):
        make_splits(ds, test_size=1.5)
    with pytest.raises(UserError, match="lower splits.folds to at most 8"):
        make_splits(ds, folds=9, test_size=0.2)
    with pytest.raises(UserError, match="choose a test size between 2 and 18 items"):
        make_splits(ds, test_size=1)
    with pytest.raises(UserError, match="fewer than 2 classes"):
        make_splits(make_ds({"a": 10, "b": 1}))


@pytest.mark.real
def test_emoji_duplicates_real():
    from transfuse.data.images import EMOJI_8_CATEGORIES, locate_emoji
    from transfuse.data.registry import load_dataset

    try:
        locate_emoji()
    except UserError:
        pytest.skip("emoji-datasource-google not installed")
    ds = load_dataset("emoji", categories=list(EMOJI_8_CATEGORIES), validate=False)
    s = make_splits(ds, folds=5, test_size=0.2, seed=0)
    hashes = ds.item_hashes()
    used = np.concatenate([s.train_idx, s.test_idx])
    assert len({hashes[i] for i in used}) == len(used)  # no content appears twice
    assert len(used) + len(s.quarantined) == len(ds)
    assert len(s.quarantined) == len(ds) - len(set(hashes))
    check_partition(s, len(ds))
