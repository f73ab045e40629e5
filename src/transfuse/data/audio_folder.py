"""The ``audio_folder`` data source (one sub-folder per class) and the file checks and loader it
shares with ``audio_manifest`` and ``speech``.

Every file is decoded once at load time and checked; a bad one (empty, unreadable header, NaN/inf
samples, all silent, over-long, absurd sample rate) goes to ``Dataset.quarantined`` with its
reason and the run goes on. Common odd sample rates (8, 44.1, 96 kHz) are fine: the backbone's
transform resamples them. Items are file paths; the loader returns ``(float32 mono, sample_rate)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfuse.data.audio_transforms import trim_silence as _trim
from transfuse.data.base import Dataset, Quarantined
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


def build_dataset(items: list[tuple[Path, str, str]], check: AudioCheck, loader: AudioLoader, name: str,
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


def audio_options(max_seconds: float | None, min_sample_rate: int, silence_threshold: float,
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
    check, loader = audio_options(max_seconds, min_sample_rate, silence_threshold, trim_silence, trim_top_db)
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
    return build_dataset(items, check, loader, name or root.name, quarantined, f"data.path {root}")
