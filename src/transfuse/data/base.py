"""The in-memory description of a labelled dataset, shared by every modality."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Modality = Literal["image", "text", "audio"]
MODALITIES: tuple[str, ...] = ("image", "text", "audio")


@dataclass(frozen=True)
class Quarantined:
    """An input left out of the run, with the reason (listed in the report)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def _identity(x: Any) -> Any:
    return x


def hash_item(item: Any, text: bool = False) -> str:
    """Content hash of one input: file bytes for a path, raw bytes for arrays, UTF-8 for text
    (``text=True``: a string is always text, even when it names an existing file)."""
    h = hashlib.sha256()
    if isinstance(item, Path) or (isinstance(item, str) and not text and _looks_like_file(item)):
        with open(item, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    elif isinstance(item, np.ndarray):
        h.update(str((item.dtype.str, item.shape)).encode())
        h.update(np.ascontiguousarray(item).tobytes())
    elif isinstance(item, str):
        h.update(b"text:" + item.encode("utf-8"))
    else:
        raise TypeError(f"cannot hash dataset item of type {type(item).__name__}")
    return h.hexdigest()[:32]


def _looks_like_file(s: str) -> bool:
    return len(s) < MAX_PATH_CHARS and "\n" not in s and is_file(s)


#: Longest path a manifest row may name (Linux's PATH_MAX) and longest label: a longer field is
#: a broken row (a text pasted into the wrong column, a runaway quote), quarantined, never a crash.
MAX_PATH_CHARS = 4096
MAX_LABEL_CHARS = 1000


def is_file(path: str | Path) -> bool:
    """``Path(path).is_file()`` that is False, never an exception, for a name the OS refuses
    (too long, a NUL byte)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def field_problem(value: str, kind: str) -> str | None:
    """Why a manifest's path or label field cannot be one (too long), in a few words, or None."""
    limit = MAX_PATH_CHARS if kind == "path" else MAX_LABEL_CHARS
    if len(value) > limit:
        return f"{kind} field has {len(value)} characters (limit {limit}); check the row's columns"
    return None


@contextmanager
def csv_field_limit(size: int) -> Iterator[None]:
    """Let the csv module read fields of up to ``size`` characters (its default stops at 128 KiB
    with ``_csv.Error``); pass the size of the text being parsed, so no field can exceed it."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, min(int(size) + 1, 2**31 - 1)))
    try:
        yield
    finally:
        csv.field_size_limit(old)


@dataclass
class Dataset:
    """Labelled samples of one modality.

    ``items`` are what ``loader`` turns into a model input: a file path (image/audio) or an
    in-memory array (decoded by ``loader``), or the text itself. ``ids`` are stable, human
    readable names (relative paths, ``"train:17"``), used in reports and split files.
    """

    modality: Modality
    items: list[Any]
    labels: np.ndarray
    classes: list[str]
    ids: list[str]
    loader: Callable[[Any], Any] = _identity
    quarantined: list[Quarantined] = field(default_factory=list)
    name: str = ""
    _hashes: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not (len(self.items) == len(self.labels) == len(self.ids)):
            raise ValueError("items, labels and ids must have the same length")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> Any:
        """The decoded input ``i`` (PIL image, waveform tuple or text)."""
        return self.loader(self.items[i])

    def item_hashes(self) -> list[str]:
        """Content hashes of every item (computed once)."""
        if self._hashes is None:
            text = self.modality == "text"
            self._hashes = [hash_item(it, text) for it in self.items]
        return self._hashes

    def fingerprint(self) -> str:
        """A hash of the contents and labels, e.g. to name a split file."""
        h = hashlib.sha256()
        for ih, lab in zip(self.item_hashes(), self.labels.tolist()):
            h.update(f"{ih}:{lab};".encode())
        h.update("|".join(self.classes).encode())
        return h.hexdigest()[:16]

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        idx = [int(i) for i in indices]
        hashes = None if self._hashes is None else [self._hashes[i] for i in idx]
        return Dataset(
            modality=self.modality,
            items=[self.items[i] for i in idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            ids=[self.ids[i] for i in idx],
            loader=self.loader,
            quarantined=[],
            name=self.name,
            _hashes=hashes,
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}
