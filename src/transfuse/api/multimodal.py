"""A multimodal model's inputs from Python (and from ``transfuse serve``): one ``{key: value}``
mapping per input, or a pandas DataFrame with one row per input.

A key is a modality (``image``, ``audio``, ``text``) or one of the run's own manifest columns
(``columns``, from :func:`transfuse.export.predict.multimodal_columns`): several text columns are
joined with ``" | "`` as at fit time. Values: an image is a file path (``str`` or ``Path``; a
relative one is read from the current directory), a numpy (``HxW[xC]`` uint8) or PIL image;
audio a file path or a ``(waveform, sample_rate)`` pair; a text a ``str``. Keys the model does
not read (a label, an id) are ignored. A bad input is a one-line error naming it and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.api.inputs import Batch, _image_array, _is_frame, _is_pil, wave_item
from transfuse.errors import UserError

FILE_FIX = {"image": "an existing image file (PNG, JPEG, ...; a relative path is read from the current "
                     "directory), a numpy (HxW[xC] uint8) or PIL image",
            "audio": "an existing WAV, FLAC or OGG file (a relative path is read from the current "
                     "directory) or a (waveform, sample_rate) pair"}


def shape(columns: Mapping[str, list[str]]) -> str:
    """What one input looks like: ``{"image": ..., "text": ...} (or the run's columns {...})``."""
    def braces(keys: list[str]) -> str:
        return "{" + ", ".join(f"{json.dumps(k)}: ..." for k in keys) + "}"

    cols = [c for m in sorted(columns) for c in columns[m]]
    return braces(sorted(columns)) + ("" if cols == sorted(columns) else f" (or the run's columns {braces(cols)})")


def _cell(v: Any) -> str:
    """A table cell as text: None and NaN (pandas' empty cell) are empty."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return str(v).strip()


def _empty(v: Any) -> bool:
    return (v is None or (isinstance(v, float) and np.isnan(v))
            or (isinstance(v, (str, Path)) and not str(v).strip()))


def modality_inputs(x: Any, columns: Mapping[str, list[str]], where: str) -> dict[str, Any]:
    """One input's ``{modality: value}`` from its keys (a modality, or the run's columns of it);
    the text is checked and joined as at fit time, image and audio values are returned as given."""
    from transfuse.data.multimodal import join_texts

    if not isinstance(x, Mapping):
        raise UserError(f"{where} is of type {type(x).__name__}, not a mapping; a multimodal model takes one "
                        f"{shape(columns)} per input")
    out: dict[str, Any] = {}
    for m in sorted(columns):
        cols = [c for c in columns[m] if c in x]
        if cols and (m not in x or len(cols) == len(columns[m])):
            value: Any = join_texts(_cell(x[c]) for c in cols) if m == "text" else x[cols[0]]
        elif m in x:
            value = x[m]
            if m == "text" and isinstance(value, str):
                value = value.strip()
        else:
            value = None
        if _empty(value):
            also = [c for c in columns[m] if c != m]
            named = f"{m!r}" + (f" (or the run's column{'s' * (len(also) > 1)} {', '.join(map(repr, also))})"
                                if also else "")
            raise UserError(f"{where} has no {m}" + (" (it is empty)" if m in x or cols else "")
                            + f"; give {named}")
        if m == "text" and not isinstance(value, str):
            raise UserError(f"{where}: the text is of type {type(value).__name__}; give a str")
        out[m] = value
    return out


def _file_or_data(m: str, v: Any, where: str, audio_check: Any) -> Any:
    """An image or audio value as a model input: a checked file path, an RGB uint8 array or a
    ``(waveform, sample_rate)`` pair."""
    from transfuse.export.predict import input_problem

    if isinstance(v, (str, Path)):
        path = os.fspath(v)
        why = input_problem(path, m, audio_check)
        if why:
            raise UserError(f"{where}: {m} {path!r}: {why}; give {FILE_FIX[m]}")
        return path
    if m == "image" and _is_pil(v):
        from transfuse.data.images import to_rgb

        return np.asarray(to_rgb(v))
    if m == "image" and isinstance(v, np.ndarray):
        return _image_array(v, f"{where}: image")
    if m == "audio" and isinstance(v, tuple) and len(v) == 2:
        return wave_item(v, f"{where}: audio")
    raise UserError(f"{where}: the {m} is of type {type(v).__name__}; give {FILE_FIX[m]}")


def multimodal_batch(X: Any, columns: Mapping[str, list[str]], audio_check: Any = None) -> Batch:
    """A list of mappings (or one), or a DataFrame -> a multimodal :class:`Batch` (records name
    them ``input:I`` / ``row:INDEX``). ``audio_check``: the run's audio checks (silence, length)."""
    if _is_frame(X):
        have = [str(c) for c in X.columns]
        for m in sorted(columns):
            missing = [c for c in columns[m] if c not in have]
            if missing and m not in have:
                need = ", ".join(c for cs in columns.values() for c in cs)
                raise UserError(f"the DataFrame has no column{'s' * (len(missing) > 1)} "
                                f"{', '.join(map(repr, missing))}; this multimodal model reads the columns {need} "
                                f"(or {', '.join(sorted(columns))}); its columns: {', '.join(have)}")
        frame = X.astype(object).where(X.notna(), None)
        rows = [{str(k): v for k, v in r.items()} for r in frame.to_dict("records")]
        wheres, names = [f"row {i}" for i in X.index], [f"row:{i}" for i in X.index]
    else:
        if isinstance(X, Mapping):
            X = [X]
        if isinstance(X, (str, Path, np.ndarray)) or _is_pil(X) or not hasattr(X, "__iter__"):
            raise UserError(f"a multimodal model takes a list of mappings, one {shape(columns)} per input, or a "
                            f"pandas DataFrame with the run's columns; got {type(X).__name__}")
        rows = list(X)
        wheres, names = [f"input {i}" for i in range(len(rows))], [f"input:{i}" for i in range(len(rows))]
    if not rows:
        raise UserError("no inputs given (an empty list)")
    items = []
    for x, where in zip(rows, wheres, strict=True):
        item = modality_inputs(x, columns, where)
        items.append({m: v if m == "text" else _file_or_data(m, v, where, audio_check) for m, v in item.items()})
    return Batch("multimodal", items, names)
