"""Audio data sources: ``audio_folder`` (one sub-folder per class, see :mod:`.audio_folder`),
``audio_manifest`` (CSV/TSV/JSONL with a path and a label column) and ``speech`` (espeak-ng
spoken words, see :mod:`.speech`); importing this module registers all three.

Files are checked as in :mod:`.audio_folder`: a bad one goes to ``Dataset.quarantined`` with its
reason and the run goes on. Items are file paths; the loader returns ``(float32 mono, sample_rate)``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from transfuse.data.audio_folder import (
    AudioLoader,
    audio_options,
    build_dataset,
    load_audio_folder,
)
from transfuse.data.base import Dataset, Quarantined, csv_field_limit, field_problem
from transfuse.data.registry import DATA_SOURCES
from transfuse.data.speech import load_speech
from transfuse.errors import UserError

__all__ = ["AudioLoader", "load_audio_folder", "load_audio_manifest", "read_manifest"]


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.csv``/``.tsv`` (header row) or ``.jsonl``/``.ndjson`` (one object a line) file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: line {n} is not JSON ({e.msg}); give one object a line") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}: line {n} is not a JSON object")
                rows.append(row)
        return rows
    if suffix in (".csv", ".tsv", ".txt"):
        with open(path, newline="", encoding="utf-8") as f, csv_field_limit(path.stat().st_size):
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    raise UserError(f"data.path {path}: unknown manifest type {suffix!r}; give .csv, .tsv or .jsonl")


def load_audio_manifest(path: str | Path | None, *, path_column: str = "path", label_column: str = "label",
                        max_seconds: float | None = 30.0, min_sample_rate: int = 4000,
                        silence_threshold: float = 1e-4, trim_silence: bool = False,
                        trim_top_db: float = 40.0, name: str | None = None) -> Dataset:
    """A manifest listing ``path`` and ``label`` per row (column names configurable); relative
    paths are resolved against the manifest's folder. Rows with a missing path or label, missing
    files and bad audio are quarantined."""
    if path is None:
        raise UserError("data source audio_manifest needs data.path: a .csv, .tsv or .jsonl manifest")
    manifest = Path(path)
    if not manifest.is_file():
        raise UserError(f"data.path {manifest}: manifest not found")
    check, loader = audio_options(max_seconds, min_sample_rate, silence_threshold, trim_silence, trim_top_db)
    rows = read_manifest(manifest)
    if not rows:
        raise UserError(f"data.path {manifest}: the manifest has no rows")
    for col, key in ((path_column, "path_column"), (label_column, "label_column")):
        if col not in rows[0]:
            raise UserError(f"data.path {manifest}: no column {col!r} (found: {', '.join(map(str, rows[0]))}); "
                            f"set data.options.{key}")
    items: list[tuple[Path, str, str]] = []
    quarantined: list[Quarantined] = []
    for n, row in enumerate(rows, 1):
        rel, label = str(row.get(path_column) or "").strip(), str(row.get(label_column) or "").strip()
        if not rel or not label:
            missing = path_column if not rel else label_column
            quarantined.append(Quarantined(f"{manifest}:{n}", f"row {n}: missing {missing}"))
            continue
        problem = field_problem(rel, "path") or field_problem(label, "label")
        if problem:
            quarantined.append(Quarantined(f"{manifest}:{n}", f"row {n}: {problem}"))
            continue
        f = Path(rel) if Path(rel).is_absolute() else manifest.parent / rel
        items.append((f, label, rel))
    return build_dataset(items, check, loader, name or manifest.stem, quarantined, f"data.path {manifest}")


DATA_SOURCES.add("audio_folder", load_audio_folder)
DATA_SOURCES.add("audio_manifest", load_audio_manifest)
DATA_SOURCES.add("speech", load_speech)
