"""Multimodal data: several inputs per sample (an image, a clip, a text), one label.

Design: a :class:`MultimodalDataset` holds one dict per sample, ``{modality: raw item}``, and a
loader per modality. Backbones see one modality each: :func:`dataset_for` (or
:meth:`MultimodalDataset.view`) gives the plain single-modality :class:`Dataset` a backbone embeds,
with the same rows, labels, classes and ids, so every backbone's features, out-of-fold and test
probabilities line up row by row and fuse like those of one modality.

Sources: ``multimodal_manifest`` (a CSV/JSONL with an image column, an audio column and/or text
columns) and ``emoji_multimodal`` (each Noto emoji's image plus its ``name`` text from
``emoji.json``, labelled by ``category``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.data.base import Dataset, Quarantined, _identity, field_problem, hash_item, is_file
from transfuse.data.registry import DATA_SOURCES
from transfuse.errors import UserError

MULTIMODAL = "multimodal"
#: Between the texts of several text columns of one row (fit, ``predict --csv`` and the Python API).
TEXT_SEPARATOR = " | "


def join_texts(parts: Iterable[str]) -> str:
    """One row's text from its text columns, as at fit time: the non-empty parts (stripped),
    joined with :data:`TEXT_SEPARATOR`."""
    return TEXT_SEPARATOR.join(s for s in (p.strip() for p in parts) if s)


@dataclass
class MultimodalDataset(Dataset):
    """Samples with several modalities: ``items[i]`` is ``{modality: raw item}`` (every sample has
    every modality of :attr:`modalities`); ``loaders`` decode each modality's raw items."""

    loaders: dict[str, Callable[[Any], Any]] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return sorted(self.items[0]) if self.items else sorted(self.loaders)

    def load(self, i: int) -> dict[str, Any]:
        return {m: self.loaders.get(m, _identity)(v) for m, v in self.items[i].items()}

    def view(self, modality: str) -> Dataset:
        """The single-modality dataset of one column (same rows, labels, classes and ids)."""
        if modality not in self.modalities:
            raise UserError(f"multimodal data {self.name!r} has no {modality!r} input; it has "
                            f"{', '.join(self.modalities)}; use a backbone of one of those modalities")
        return Dataset(modality=modality, items=[it[modality] for it in self.items],  # type: ignore[arg-type]
                       labels=self.labels, classes=list(self.classes), ids=list(self.ids),
                       loader=self.loaders.get(modality, _identity), name=f"{self.name}:{modality}")

    def item_hashes(self) -> list[str]:
        if self._hashes is None:
            out = []
            for it in self.items:
                h = hashlib.sha256()
                for m in sorted(it):
                    h.update(f"{m}={hash_item(it[m], text=m == 'text')};".encode())
                out.append(h.hexdigest()[:32])
            self._hashes = out
        return self._hashes

    def subset(self, indices: Sequence[int] | np.ndarray) -> MultimodalDataset:
        idx = [int(i) for i in indices]
        return MultimodalDataset(
            modality=self.modality, items=[self.items[i] for i in idx], labels=self.labels[idx],
            classes=list(self.classes), ids=[self.ids[i] for i in idx], loader=self.loader,
            name=self.name, _hashes=None if self._hashes is None else [self._hashes[i] for i in idx],
            loaders=dict(self.loaders))


def dataset_for(data: Dataset, modality: str) -> Dataset:
    """What a backbone of ``modality`` sees of ``data``: ``data`` itself, or its view."""
    if isinstance(data, MultimodalDataset):
        return data.view(modality)
    if data.modality != modality:
        raise UserError(f"a {modality} backbone cannot read {data.modality} data {data.name!r}; "
                        f"use a {data.modality} backbone")
    return data


def _build(name: str, rows: list[tuple[dict[str, Any], str, str]], loaders: dict[str, Callable],
           quarantined: list[Quarantined], class_order: Sequence[str] | None = None) -> MultimodalDataset:
    if not rows:
        raise UserError(f"multimodal data {name!r}: no usable rows ({len(quarantined)} quarantined)")
    order = list(class_order) if class_order is not None else sorted({r[2] for r in rows})
    index = {c: i for i, c in enumerate(order)}
    return MultimodalDataset(modality=MULTIMODAL, items=[r[0] for r in rows],  # type: ignore[arg-type]
                             labels=np.array([index[r[2]] for r in rows], np.int64), classes=order,
                             ids=[r[1] for r in rows], quarantined=quarantined, name=name,
                             loaders=loaders)


@DATA_SOURCES.register("multimodal_manifest")
def multimodal_manifest(
    path: str | None,
    *,
    image_column: str | None = None,
    audio_column: str | None = None,
    text_columns: Sequence[str] = (),
    label_column: str = "label",
    id_column: str | None = None,
    format: str | None = None,
    validate: bool = True,
) -> MultimodalDataset:
    """Rows of a CSV/JSONL manifest with an image column, an audio column and/or text columns.

    File paths are resolved against the manifest's folder; several text columns are joined with
    ``" | "``. A row whose file is missing or unreadable, or whose label or texts are all empty, is
    quarantined with its reason."""
    from transfuse.data.images import _read_manifest_rows, check_image, load_image

    if not path or not Path(path).expanduser().is_file():
        raise UserError(f"data.path {path!r} is not a file; the multimodal_manifest source needs a "
                        ".csv or .jsonl manifest")
    p = Path(path).expanduser()
    fmt = format or {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(p.suffix.lower())
    if fmt not in ("csv", "jsonl"):
        raise UserError(f"data.options.format {format or p.suffix!r} for {p.name} is not supported; "
                        "valid: csv, jsonl")
    text_columns = [text_columns] if isinstance(text_columns, str) else list(text_columns)
    if not (image_column or audio_column or text_columns):
        raise UserError("multimodal_manifest needs at least one of data.options.image_column, "
                        "audio_column, text_columns")
    rows = _read_manifest_rows(p, fmt)
    if not rows:
        raise UserError(f"manifest {p} has no rows")
    cols = set(rows[0])
    for key, col in [("label_column", label_column), ("image_column", image_column),
                     ("audio_column", audio_column), ("id_column", id_column)] + \
            [("text_columns", c) for c in text_columns]:
        if col is not None and col not in cols:
            raise UserError(f"manifest {p} has no column {col!r} (data.options.{key}); its columns "
                            f"are {', '.join(sorted(map(repr, cols)))}")
    loaders: dict[str, Callable] = {}
    if image_column:
        loaders["image"] = load_image
    if audio_column:
        from transfuse.data.audio import AudioLoader

        loaders["audio"] = AudioLoader()
    quarantined: list[Quarantined] = []
    out: list[tuple[dict[str, Any], str, str]] = []
    for n, row in enumerate(rows, 2 if fmt == "csv" else 1):
        where = f"{p}:{n}"
        label = str(row.get(label_column) or "").strip()
        if not label:
            quarantined.append(Quarantined(where, f"row has an empty {label_column!r}"))
            continue
        if field_problem(label, "label"):
            quarantined.append(Quarantined(where, field_problem(label, "label") or ""))
            continue
        item: dict[str, Any] = {}
        reason = None
        for m, col in (("image", image_column), ("audio", audio_column)):
            if col is None:
                continue
            raw = str(row.get(col) or "").strip()
            if field_problem(raw, "path"):
                reason = f"{m} {field_problem(raw, 'path')}"
                break
            f = Path(raw).expanduser()
            f = f if f.is_absolute() else p.parent / f
            if not raw or not is_file(f):
                reason = f"{m} file {raw!r} not found"
            elif m == "image" and validate:
                reason = check_image(f)
            item[m] = str(f)
            if reason:
                break
        if text_columns and reason is None:
            parts = [str(row.get(c) or "").strip() for c in text_columns]
            if not any(parts):
                reason = f"text columns {text_columns} are all empty"
            item["text"] = join_texts(parts)
        if reason:
            quarantined.append(Quarantined(where, reason))
            continue
        out.append((item, str(row[id_column]) if id_column else f"row{n}", label))
    return _build(p.stem, out, loaders, quarantined)


@DATA_SOURCES.register("emoji_multimodal")
def emoji_multimodal(
    path: str | None = None,
    *,
    categories: Sequence[str] | None = None,
    min_per_class: int = 10,
    size: int = 64,
    text: str = "name",
    validate: bool = False,
) -> MultimodalDataset:
    """Each Noto emoji's image plus its ``text`` field of ``emoji.json`` (``name``, or
    ``short_names`` joined), labelled by its ``category``: an image + text task."""
    from transfuse.data.images import emoji, load_image, locate_emoji

    if text not in ("name", "short_names"):
        raise UserError(f"data.options.text {text!r} is not supported; valid: name, short_names")
    images = emoji(path, categories=categories, min_per_class=min_per_class, size=size,
                   validate=validate)
    with open(locate_emoji(path) / "emoji.json", encoding="utf-8") as f:
        meta = {e["image"]: e for e in json.load(f)}
    rows, quarantined = [], list(images.quarantined)
    for file, id_, lab in zip(images.items, images.ids, images.labels.tolist()):
        e = meta.get(id_, {})
        words = e.get("name") if text == "name" else " ".join(e.get("short_names") or [])
        words = (words or "").strip().lower().replace("_", " ")
        if not words:
            quarantined.append(Quarantined(file, f"emoji.json gives no {text!r} for {id_}"))
            continue
        rows.append(({"image": file, "text": words}, id_, images.classes[lab]))
    present = {r[2] for r in rows}
    return _build(f"emoji-multimodal-{size}", rows, {"image": load_image}, quarantined,
                  class_order=[c for c in images.classes if c in present])
