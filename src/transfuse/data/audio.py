"""Audio data sources: ``audio_folder`` (one sub-folder per class) and ``audio_manifest`` (CSV/TSV/
JSONL with a path and a label column).

Every file is decoded once at load time and checked; a bad one (empty, unreadable header, NaN/inf
samples, all silent, over-long, absurd sample rate) goes to ``Dataset.quarantined`` with its
reason and the run goes on. Common odd sample rates (8, 44.1, 96 kHz) are fine: the backbone's
transform resamples them. Items are file paths; the loader returns ``(float32 mono, sample_rate)``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.backbones.audio.common import trim_silence as _trim
from transfuse.data.base import Dataset, Quarantined
from transfuse.data.registry import DATA_SOURCES
from transfuse.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


@dataclass(frozen=True)
class AudioCheck:
    """Validation thresholds (the sources' options of the same names)."""

    max_seconds: float | None = 30.0
    min_sample_rate: int = 4000
    silence_threshold: float = 1e-4  # peak |sample| at or below this is silence (-80 dBFS)


@dataclass(frozen=True)
class AudioLoader:
    """Picklable loader: path -> ``(float32 mono waveform, sample_rate)``, optionally with the
    leading/trailing silence (frames ``top_db`` below the loudest) cut."""

    trim_silence: bool = False
    top_db: float = 40.0

    def __call__(self, path: str | Path) -> tuple[np.ndarray, int]:
        wave, sr = decode(path)
        if self.trim_silence:
            wave = _trim(wave, self.top_db, frame=max(1, sr // 40), hop=max(1, sr // 100))
        return wave, sr


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a wav/flac/ogg file as float32 mono (channels averaged) and its sample rate."""
    import soundfile as sf

    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return wave.mean(axis=1, dtype=np.float32), int(sr)


def check_file(path: Path, check: AudioCheck) -> str | None:
    """Why ``path`` cannot be used (one line), or None when it is fine. Decodes the file once."""
    import soundfile as sf

    try:
        size = path.stat().st_size
    except OSError:
        return "file not found"
    if size == 0:
        return "zero-length file (0 bytes)"
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises its own error types for every bad header
        return f"corrupt or unsupported audio header ({_short(e)})"
    if info.frames == 0:
        return "zero-length audio (no samples)"
    if info.samplerate < check.min_sample_rate:
        return f"sample rate {info.samplerate} Hz is below min_sample_rate={check.min_sample_rate}"
    if check.max_seconds is not None and info.duration > check.max_seconds:
        return f"over-long clip: {info.duration:.1f} s > max_seconds={check.max_seconds:g}"
    try:
        wave, _ = decode(path)
    except Exception as e:
        return f"corrupt audio data ({_short(e)})"
    if wave.size == 0:
        return "zero-length audio (no samples)"
    bad = int(np.count_nonzero(~np.isfinite(wave)))
    if bad:
        return f"NaN/inf samples ({bad} of {wave.size})"
    peak = float(np.abs(wave).max())
    if peak <= check.silence_threshold:
        return f"all-silent (peak {peak:.1e} <= silence_threshold={check.silence_threshold:g})"
    return None


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:160] or type(e).__name__


def _build(items: list[tuple[Path, str, str]], check: AudioCheck, loader: AudioLoader, name: str,
           quarantined: list[Quarantined], where: str) -> Dataset:
    """Validate ``(path, label, id)`` triples into a Dataset (classes: labels with a good file)."""
    good: list[tuple[Path, str, str]] = []
    for path, label, ident in items:
        reason = check_file(path, check)
        if reason is None:
            good.append((path, label, ident))
        else:
            quarantined.append(Quarantined(str(path), reason))
    if not good:
        first = "; ".join(f"{q.path}: {q.reason}" for q in quarantined[:3])
        raise UserError(f"{where}: no usable audio file ({len(quarantined)} quarantined: {first})")
    classes = sorted({label for _, label, _ in good})
    index = {c: i for i, c in enumerate(classes)}
    return Dataset(modality="audio", items=[str(p) for p, _, _ in good],
                   labels=np.array([index[lab] for _, lab, _ in good], dtype=np.int64),
                   classes=classes, ids=[i for _, _, i in good], loader=loader,
                   quarantined=quarantined, name=name)


def _options(max_seconds: float | None, min_sample_rate: int, silence_threshold: float,
             trim_silence: bool, trim_top_db: float) -> tuple[AudioCheck, AudioLoader]:
    if max_seconds is not None and max_seconds <= 0:
        raise UserError(f"data option max_seconds={max_seconds} must be positive (or null for no limit)")
    return (AudioCheck(max_seconds, int(min_sample_rate), float(silence_threshold)),
            AudioLoader(bool(trim_silence), float(trim_top_db)))


def load_audio_folder(path: str | Path | None, *, extensions: tuple[str, ...] | list[str] = AUDIO_EXTENSIONS,
                      max_seconds: float | None = 30.0, min_sample_rate: int = 4000,
                      silence_threshold: float = 1e-4, trim_silence: bool = False,
                      trim_top_db: float = 40.0, name: str | None = None) -> Dataset:
    """An audio folder: ``path/<class>/**/*.{wav,flac,ogg}``. Empty class folders and bad files
    are quarantined with their reasons; files with other extensions are ignored."""
    if path is None:
        raise UserError("data source audio_folder needs data.path: a folder with one sub-folder per class")
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"data.path {root}: not a folder; give a folder with one sub-folder per class")
    check, loader = _options(max_seconds, min_sample_rate, silence_threshold, trim_silence, trim_top_db)
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise UserError(f"data.path {root}: no class sub-folders; put each class's files in "
                        f"{root}/<class>/")
    items: list[tuple[Path, str, str]] = []
    quarantined: list[Quarantined] = []
    for d in class_dirs:
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in exts
                       and not f.name.startswith("."))
        if not files:
            quarantined.append(Quarantined(str(d), f"empty class folder: no {'/'.join(sorted(exts))} files"))
        items += [(f, d.name, f.relative_to(root).as_posix()) for f in files]
    return _build(items, check, loader, name or root.name, quarantined, f"data.path {root}")


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
        with open(path, newline="", encoding="utf-8") as f:
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
    check, loader = _options(max_seconds, min_sample_rate, silence_threshold, trim_silence, trim_top_db)
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
        f = Path(rel) if Path(rel).is_absolute() else manifest.parent / rel
        items.append((f, label, rel))
    return _build(items, check, loader, name or manifest.stem, quarantined, f"data.path {manifest}")


DATA_SOURCES.add("audio_folder", load_audio_folder)
DATA_SOURCES.add("audio_manifest", load_audio_manifest)

from transfuse.data import speech as _speech  # noqa: E402  (registers the "speech" source)

DATA_SOURCES.add("speech", _speech.load_speech)
