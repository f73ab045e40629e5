"""What the Python API accepts as data, turned into one form: a :class:`Batch` of decoded items of
one modality (for prediction), or files a data source reads (for fitting, so a run folder can be
resumed and its config names real data).

Accepted: a folder or file path (``str`` or :class:`~pathlib.Path`); a list of texts; a list of
image or audio file paths (``Path``, or ``str`` for an image/audio model); numpy images (a list of
``HxW`` / ``HxWxC`` uint8 arrays, or one ``(n, H, W[, C])`` array); a 2-D numeric array whose rows
are flattened greyscale images (``image_shape``; scikit-learn's convention, e.g. ``load_digits().data``);
PIL images; ``(waveform, sample_rate)`` pairs for audio; a pandas DataFrame or Series (one column
of any of these). In a text model a ``str`` is always the text itself; a ``Path`` is a file to read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif"}
TABLE_SUFFIXES = {".csv", ".tsv", ".tab", ".jsonl", ".ndjson"}


@dataclass
class Batch:
    """Inputs of one modality: ``items`` (uint8 RGB arrays, texts, ``(wave, sr)`` pairs or file
    paths; for a multimodal model ``{modality: one of those}``), and ``names`` (what a prediction
    record calls each input)."""

    modality: str
    items: list[Any]
    names: list[str]

    def __len__(self) -> int:
        return len(self.items)

    def dataset(self) -> Any:
        """An unlabelled :class:`~transfuse.data.base.Dataset` of the items."""
        from transfuse.data.base import Dataset

        if self.modality == "multimodal":  # items {modality: input}: each backbone reads its own
            from transfuse.export.predict import multimodal_dataset

            return multimodal_dataset(list(self.items), list(self.names),
                                      {"image": load_image_item, "audio": load_audio_item})
        loader = {"image": load_image_item, "audio": load_audio_item}.get(self.modality)
        kw = {"loader": loader} if loader else {}
        return Dataset(self.modality, list(self.items), np.zeros(len(self.items), int), ["?"],
                       list(self.names), **kw)


def load_image_item(item: Any) -> Any:
    """A file path or an RGB uint8 array -> PIL RGB (files as ``transfuse predict`` reads them)."""
    from transfuse.data.images import array_to_image, load_image

    if isinstance(item, np.ndarray):
        return array_to_image(item)
    try:
        return load_image(item)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... for a bad file
        raise UserError(f"input {str(item)!r} is not a decodable image ({type(e).__name__}); give PNG, JPEG, "
                        "BMP, GIF, WebP or TIFF files") from None


def load_audio_item(item: Any) -> tuple[np.ndarray, int]:
    from transfuse.data.audio_folder import AudioLoader

    if isinstance(item, tuple):
        return np.asarray(item[0], np.float32), int(item[1])
    try:
        return AudioLoader()(item)
    except Exception as e:  # soundfile's LibsndfileError, RuntimeError, ...
        raise UserError(f"input {str(item)!r} is not decodable audio ({type(e).__name__}); give WAV, FLAC or "
                        "OGG files") from None


def wave_item(x: tuple[Any, Any], what: str) -> tuple[np.ndarray, int]:
    """A ``(waveform, sample_rate)`` pair as the models read it: float32 mono (channels averaged)."""
    w, sr = np.asarray(x[0], np.float32), x[1]
    if w.ndim == 2:
        w = w.mean(axis=1, dtype=np.float32)
    if w.ndim != 1 or not np.isfinite(w).all() or int(sr) <= 0:
        raise UserError(f"{what}: give (1-D finite waveform, sample_rate > 0); got shape {w.shape}, sample rate {sr}")
    return w, int(sr)


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _is_frame(x: Any) -> bool:
    return type(x).__name__ == "DataFrame" and hasattr(x, "columns")


def _is_series(x: Any) -> bool:
    return type(x).__name__ == "Series" and hasattr(x, "to_list")


def _image_array(a: np.ndarray, what: str) -> np.ndarray:
    """One image as an RGB uint8 array ``(H, W, 3)``."""
    from PIL import Image

    from transfuse.data.images import to_rgb

    if a.dtype != np.uint8:
        raise UserError(f"{what}: image arrays must be uint8 (0..255), got {a.dtype}; convert with "
                        "np.clip(a, 0, 255).astype(np.uint8), or give 2-D rows with image_shape")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise UserError(f"{what}: an image array must be HxW or HxWxC with C in 1, 3, 4; got shape {a.shape}")
    return np.asarray(to_rgb(Image.fromarray(a)))


def rows_to_images(X: np.ndarray, image_shape: tuple[int, int] | None, pixel_range: tuple[float, float] | None
                   ) -> list[np.ndarray]:
    """A 2-D numeric array: each row a flattened greyscale image of ``image_shape`` (default: square
    when the row length is a square number, else one row of pixels); uint8 rows are pixels as they
    are, other values are mapped linearly from ``pixel_range`` (low, high) to 0..255 and clipped."""
    d = X.shape[1]
    if image_shape is None:
        side = math.isqrt(d)
        image_shape = (side, side) if side * side == d else (1, d)
    h, w = image_shape
    if h * w != d:
        raise UserError(f"image_shape {tuple(image_shape)} has {h * w} pixels but each row of X has {d} values; "
                        "give image_shape=(height, width) with height * width == X.shape[1]")
    if X.dtype == np.uint8:
        px = X
    else:
        lo, hi = pixel_range if pixel_range is not None else (0.0, 255.0)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        px = np.clip(np.rint((np.asarray(X, np.float64) - lo) * scale), 0, 255).astype(np.uint8)
    return [np.repeat(r.reshape(h, w)[:, :, None], 3, axis=2) for r in px]


def _column(frame: Any, column: str | None) -> list[Any]:
    cols = [str(c) for c in frame.columns]
    if column is None:
        if len(cols) != 1:
            raise UserError(f"the DataFrame has columns {cols}; say which holds the inputs with column='NAME'")
        column = cols[0]
    if column not in cols:
        raise UserError(f"the DataFrame has no column {column!r}; its columns are {cols}")
    return frame[column].to_list()


def _path_modality(p: Path) -> str | None:
    s = p.suffix.lower()
    return "image" if s in IMAGE_SUFFIXES else "audio" if s in AUDIO_SUFFIXES else None


def as_batch(X: Any, modality: str | None = None, *, column: str | None = None,
             image_shape: tuple[int, int] | None = None, pixel_range: tuple[float, float] | None = None) -> Batch:
    """Any accepted form of inputs -> a :class:`Batch`; ``modality`` (the model's) decides what a
    ``str`` is, and is inferred from the data when not given."""
    if _is_frame(X):
        X = _column(X, column)
    elif _is_series(X):
        X = X.to_list()
    if isinstance(X, (str, Path)):
        p = Path(X)
        if isinstance(X, Path) or (modality in ("image", "audio") or modality is None) and _exists(p):
            if p.is_dir():
                files = sorted(f for f in p.rglob("*") if f.is_file() and _path_modality(f) is not None
                               and not any(part.startswith(".") for part in f.relative_to(p).parts))
                if not files:
                    raise UserError(f"folder {str(p)!r} holds no image or audio files; give files or a folder of them")
                return as_batch(files, modality)
            return as_batch([p], modality)
        X = [X]
    if _is_pil(X) or isinstance(X, tuple) and len(X) == 2 and isinstance(X[0], np.ndarray):
        X = [X]
    if isinstance(X, np.ndarray):
        if X.dtype.kind in "USO" and X.ndim == 1:
            X = X.tolist()
        elif X.ndim == 2 and X.dtype.kind in "biuf":
            if not np.isfinite(X).all():
                raise ValueError("Input X contains NaN or infinity; images cannot hold them")
            return _images(rows_to_images(X, image_shape, pixel_range), modality)
        elif X.ndim in (3, 4):
            return _images([_image_array(a, f"image {i}") for i, a in enumerate(X)], modality)
        else:
            raise UserError(f"cannot read an array of shape {X.shape} and dtype {X.dtype} as inputs; give a list of "
                            "texts, (n, H, W[, C]) uint8 images, or 2-D rows of flattened images")
    if not isinstance(X, Sequence) and not hasattr(X, "__iter__"):
        raise UserError(f"cannot read inputs of type {type(X).__name__}; give texts, file paths, numpy or PIL "
                        "images, (waveform, sample_rate) pairs or a pandas DataFrame")
    X = list(X)
    if not X:
        raise UserError("no inputs given (an empty list)")
    kinds = {_kind(x) for x in X}
    if len(kinds) > 1:
        raise UserError(f"inputs mix {', '.join(sorted(kinds))}; give one kind of input per call")
    kind = kinds.pop()
    if kind == "text" and modality is None and all(_path_modality(Path(x)) and _exists(Path(x)) for x in X):
        kind = "path"  # a list of existing image/audio files, no modality said
    if kind == "text":
        if modality in ("image", "audio"):
            paths = [Path(x) for x in X]
            return as_batch(paths, modality)
        return _check(Batch("text", [str(x) for x in X], [str(x) for x in X]), modality)
    if kind == "path":
        missing = [str(p) for p in X if not Path(p).is_file()]
        if missing:
            what = {"image": "image files, numpy or PIL images", "audio": "audio files or (waveform, sample_rate) "
                    "pairs", "text": "texts (str) or text files (Path)"}.get(modality or "", "existing files")
            raise UserError(f"input {missing[0]!r} is not an existing file; give {what}")
        if modality == "text":
            texts = [Path(p).read_text(encoding="utf-8", errors="replace") for p in X]
            return Batch("text", texts, [str(p) for p in X])
        mods = {_path_modality(Path(p)) or "?" for p in X}
        found = modality or (mods.pop() if len(mods) == 1 else None)
        bad = next((p for p in X if _path_modality(Path(p)) not in (found, None)), None)
        if found not in ("image", "audio") or bad is not None:
            raise UserError(f"input {str(bad or X[0])!r} is not an {modality or 'image or audio'} file; "
                            "give image files (png, jpg, ...) or audio files (wav, flac, ...)")
        return Batch(found, [str(Path(p)) for p in X], [str(p) for p in X])
    if kind == "pil":
        from transfuse.data.images import to_rgb

        return _images([np.asarray(to_rgb(im)) for im in X], modality)
    if kind == "array":
        return _images([_image_array(np.asarray(a), f"image {i}") for i, a in enumerate(X)], modality)
    if kind == "audio":
        waves = [wave_item(x, f"audio input {i}") for i, x in enumerate(X)]
        return _check(Batch("audio", waves, [f"audio:{i}" for i in range(len(waves))]), modality)
    raise UserError(f"cannot read inputs of type {type(X[0]).__name__}; give texts, file paths, numpy or PIL "
                    "images, (waveform, sample_rate) pairs or a pandas DataFrame")


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):
        return False


def _kind(x: Any) -> str:
    if isinstance(x, Path):
        return "path"
    if isinstance(x, str):
        return "text"
    if _is_pil(x):
        return "pil"
    if isinstance(x, tuple) and len(x) == 2 and np.ndim(x[1]) == 0:
        return "audio"
    if isinstance(x, np.ndarray):
        return "array"
    return type(x).__name__


def _images(arrays: list[np.ndarray], modality: str | None) -> Batch:
    return _check(Batch("image", arrays, [f"image:{i}" for i in range(len(arrays))]), modality)


def _check(b: Batch, modality: str | None) -> Batch:
    if modality is not None and b.modality != modality:
        raise UserError(f"these inputs are {b.modality} but this model takes {modality} inputs")
    return b


# -- fitting: inputs as files a data source reads ----------------------------------------------------


def fingerprint(batch: Batch, labels: Sequence[str]) -> str:
    from transfuse.data.base import hash_item

    h = hashlib.sha256(batch.modality.encode())
    for it, lab in zip(batch.items, labels, strict=True):
        if isinstance(it, tuple):
            h.update(hash_item(np.asarray(it[0], np.float32)).encode() + str(it[1]).encode())
        else:
            h.update(hash_item(Path(it) if batch.modality != "text" and isinstance(it, str) else it,
                               text=batch.modality == "text").encode())
        h.update(b"\0" + str(lab).encode() + b"\0")
    return h.hexdigest()[:16]


def write_dataset(batch: Batch, labels: Sequence[str], folder: Path, write: bool = True) -> tuple[str, str]:
    """Write ``batch`` with its labels under ``folder`` as a data source reads it; returns
    ``(source, path)``. Images in memory become PNG files (lossless), audio 32-bit float WAV files;
    files given by path are listed, not copied. ``write=False`` (a follower rank of a distributed
    run): nothing is written; it waits for rank 0's copy (the same content, in the same
    content-addressed folder)."""
    from transfuse.distributed import wait_for_rank0
    from transfuse.io import atomic_write_text

    if not write:
        f = folder / ("data.jsonl" if batch.modality == "text" else "manifest.csv")
        wait_for_rank0(f, f"its inputs in {folder}")
        return {"text": "text_table", "image": "manifest", "audio": "audio_manifest"}[batch.modality], str(f)
    folder.mkdir(parents=True, exist_ok=True)
    if batch.modality == "text":
        f = folder / "data.jsonl"
        atomic_write_text(f, "".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n"
                                     for t, lab in zip(batch.items, labels, strict=True)))
        return "text_table", str(f)
    rows = []
    for i, (it, lab) in enumerate(zip(batch.items, labels, strict=True)):
        if isinstance(it, str):
            rows.append((str(Path(it).resolve()), lab))
            continue
        out = folder / f"{i:06d}.{'png' if batch.modality == 'image' else 'wav'}"
        if not out.exists():
            tmp = out.with_name(out.name + ".tmp")
            if batch.modality == "image":
                from PIL import Image

                Image.fromarray(it).save(tmp, format="PNG")
            else:
                import soundfile as sf

                sf.write(tmp, it[0], it[1], subtype="FLOAT", format="WAV")
            tmp.replace(out)
        rows.append((str(out), lab))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label"])
    w.writerows(rows)
    f = folder / "manifest.csv"
    atomic_write_text(f, buf.getvalue())
    return ("manifest" if batch.modality == "image" else "audio_manifest"), str(f)
