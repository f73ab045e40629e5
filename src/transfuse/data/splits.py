"""Stratified k-fold + held-out test splits, fixed by a seed, with exact duplicates removed.

Decisions (see docs/data.md):

* **Indices are absolute**: ``train_idx``, ``test_idx`` and every fold's ``(train, val)`` index
  the dataset given to :func:`make_splits` (``dataset.subset(idx)`` gives each part). With an
  external ``test_dataset``, ``test_idx`` indexes that dataset instead.
* **Exact duplicates** (same content hash) are removed before splitting: the first occurrence is
  kept, later ones are quarantined ("exact duplicate of <id>"), so no copy crosses splits. Items of
  an external test set that duplicate a training item (or an earlier test item) are quarantined.
* **Small classes**: a class needs at least 2 training items (each CV training fold then holds
  one) and, with an internal test split, one more for the test split. A smaller class is
  quarantined (each item, with the reason) and listed in ``dropped_classes``; ``dataset.classes``
  is left as it is, the class simply has no items in any split. A class with fewer training
  items than folds is kept and a warning is recorded: it is missing from some validation folds.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from transfuse.data.base import Dataset, Quarantined
from transfuse.errors import UserError
from transfuse.io import atomic_write_json, read_json

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Where every kept item goes. All indices are absolute (see the module docstring)."""

    train_idx: np.ndarray
    test_idx: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    seed: int = 0
    external_test: bool = False
    fingerprint: str = ""
    quarantined: list[Quarantined] = field(default_factory=list)
    test_quarantined: list[Quarantined] = field(default_factory=list)
    dropped_classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (:meth:`from_json` restores it exactly)."""
        return {
            "format": FORMAT_VERSION,
            "seed": self.seed,
            "external_test": self.external_test,
            "fingerprint": self.fingerprint,
            "train_idx": self.train_idx.tolist(),
            "test_idx": self.test_idx.tolist(),
            "folds": [{"train": tr.tolist(), "val": va.tolist()} for tr, va in self.folds],
            "quarantined": [q.to_dict() for q in self.quarantined],
            "test_quarantined": [q.to_dict() for q in self.test_quarantined],
            "dropped_classes": list(self.dropped_classes),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Splits:
        if d.get("format") != FORMAT_VERSION:
            raise UserError(
                f"splits file format {d.get('format')!r} is not supported (expected {FORMAT_VERSION})"
            )
        arr = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
        return cls(
            train_idx=arr(d["train_idx"]),
            test_idx=arr(d["test_idx"]),
            folds=[(arr(f["train"]), arr(f["val"])) for f in d["folds"]],
            seed=int(d["seed"]),
            external_test=bool(d["external_test"]),
            fingerprint=d["fingerprint"],
            quarantined=[Quarantined(**q) for q in d["quarantined"]],
            test_quarantined=[Quarantined(**q) for q in d["test_quarantined"]],
            dropped_classes=list(d["dropped_classes"]),
            warnings=list(d["warnings"]),
        )

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        return cls.from_json(read_json(path))

    def check_matches(self, dataset: Dataset) -> None:
        """Raise a UserError when ``dataset`` is not the data these splits were made for."""
        if self.fingerprint and dataset.fingerprint() != self.fingerprint:
            raise UserError(
                "the saved splits were made for different data (fingerprint mismatch); "
                "delete splits.json in the run folder to split again, or restore the original data"
            )


def _where(ds: Dataset, i: int) -> str:
    item = ds.items[i]
    return str(item) if isinstance(item, (str, Path)) else ds.ids[i]


def _dedup_within(ds: Dataset) -> tuple[np.ndarray, list[Quarantined]]:
    """Indices of the first occurrence of each content hash; later copies quarantined."""
    first: dict[str, int] = {}
    keep, quarantined = [], []
    for i, h in enumerate(ds.item_hashes()):
        j = first.setdefault(h, i)
        if j == i:
            keep.append(i)
            continue
        reason = f"exact duplicate of {ds.ids[j]}"
        if ds.labels[i] != ds.labels[j]:
            reason += f" (labelled {ds.classes[ds.labels[j]]!r} there, {ds.classes[ds.labels[i]]!r} here)"
        quarantined.append(Quarantined(_where(ds, i), reason))
    return np.asarray(keep, dtype=np.int64), quarantined


def _dedup_test(train: Dataset, train_idx: np.ndarray, test: Dataset) -> tuple[np.ndarray, list[Quarantined]]:
    """External test items that are new, quarantining copies of training or earlier test items."""
    train_seen = {train.item_hashes()[i]: int(i) for i in train_idx}
    test_seen: dict[str, int] = {}
    keep, quarantined = [], []
    for i, h in enumerate(test.item_hashes()):
        if h in train_seen:
            quarantined.append(
                Quarantined(_where(test, i), f"exact duplicate of training item {train.ids[train_seen[h]]}")
            )
        elif h in test_seen:
            quarantined.append(
                Quarantined(_where(test, i), f"exact duplicate of test item {test.ids[test_seen[h]]}")
            )
        else:
            test_seen[h] = i
            keep.append(i)
    return np.asarray(keep, dtype=np.int64), quarantined


def _drop_small_classes(
    ds: Dataset, keep: np.ndarray, need: int
) -> tuple[np.ndarray, list[str], list[Quarantined]]:
    counts = np.bincount(ds.labels[keep], minlength=len(ds.classes))
    small = [k for k, n in enumerate(counts) if 0 < n < need]
    quarantined = [
        Quarantined(
            _where(ds, int(i)),
            f"class {ds.classes[ds.labels[i]]!r} has {counts[ds.labels[i]]} unique items, fewer than the "
            f"{need} needed for stratified splits; class left out (add images to it)",
        )
        for i in keep[np.isin(ds.labels[keep], small)]
    ]
    return keep[~np.isin(ds.labels[keep], small)], [ds.classes[k] for k in small], quarantined


def _internal_test(
    ds: Dataset, keep: np.ndarray, test_size: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    n_classes = len(np.unique(ds.labels[keep]))
    n_test = test_size if isinstance(test_size, int) else int(np.ceil(test_size * len(keep)))
    if n_test < n_classes or len(keep) - n_test < n_classes:
        raise UserError(
            f"splits.test_size={test_size!r} gives {n_test} test items for {n_classes} classes and "
            f"{len(keep)} items; choose a test size between {n_classes} and {len(keep) - n_classes} items"
        )
    train_idx, test_idx = train_test_split(
        keep, test_size=test_size, random_state=seed, stratify=ds.labels[keep]
    )
    return np.sort(train_idx), np.sort(test_idx)


def make_splits(
    dataset: Dataset,
    folds: int = 5,
    test_size: float | int = 0.2,
    seed: int = 0,
    test_dataset: Dataset | None = None,
) -> Splits:
    """Stratified ``folds``-fold CV over a training part plus a held-out test part.

    ``test_size`` is a fraction (0 < x < 1) or a count of items held out, or 0 for no test
    split; it is ignored when ``test_dataset`` (an external test set) is given. The result
    depends only on the data and ``seed``. Nothing is changed on ``dataset``.
    """
    if not isinstance(folds, int) or folds < 2:
        raise UserError(f"splits.folds must be an integer >= 2, got {folds!r}")
    if isinstance(test_size, float) and not 0.0 <= test_size < 1.0:
        raise UserError(f"splits.test_size must be a fraction in [0, 1) or a count, got {test_size!r}")
    if test_dataset is not None and list(test_dataset.classes) != list(dataset.classes):
        raise UserError(
            f"the test data's classes {test_dataset.classes} differ from the training data's "
            f"{dataset.classes}; give both the same class names"
        )
    keep, quarantined = _dedup_within(dataset)
    internal = test_dataset is None and test_size != 0
    need = 3 if internal else 2
    keep, dropped, small_q = _drop_small_classes(dataset, keep, need)
    quarantined += small_q
    if len(np.unique(dataset.labels[keep])) < 2:
        raise UserError(
            f"the data has fewer than 2 classes with at least {need} unique items each; "
            "a classifier needs at least 2 classes"
        )
    test_quarantined: list[Quarantined] = []
    if test_dataset is not None:
        train_idx = keep
        test_idx, test_quarantined = _dedup_test(dataset, train_idx, test_dataset)
    elif internal:
        train_idx, test_idx = _internal_test(dataset, keep, test_size, seed)
    else:
        train_idx, test_idx = keep, np.zeros(0, dtype=np.int64)

    y = dataset.labels[train_idx]
    notes = []
    train_counts = np.bincount(y, minlength=len(dataset.classes))
    for c, n in zip(dataset.classes, train_counts):
        if 0 < n < folds:
            notes.append(
                f"class {c!r} has {n} training items, fewer than {folds} folds: "
                f"it is missing from {folds - n} validation folds"
            )
    if train_counts.max() < folds:
        raise UserError(
            f"splits.folds={folds} is more than the largest class's {train_counts.max()} training items; "
            f"lower splits.folds to at most {train_counts.max()}"
        )
    for note in notes:
        log.warning(note)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        fold_list = [(train_idx[tr], train_idx[va]) for tr, va in skf.split(np.zeros(len(y)), y)]
    return Splits(
        train_idx=np.asarray(train_idx, dtype=np.int64),
        test_idx=np.asarray(test_idx, dtype=np.int64),
        folds=[(np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64)) for tr, va in fold_list],
        seed=seed,
        external_test=test_dataset is not None,
        fingerprint=dataset.fingerprint(),
        quarantined=quarantined,
        test_quarantined=test_quarantined,
        dropped_classes=dropped,
        warnings=notes,
    )
