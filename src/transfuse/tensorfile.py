"""The checked header of a safetensors file: every reader in transfuse goes through it.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
``data_offsets`` relative to the end of the header) and the raw bytes. A damaged or hostile header
can name overlapping ranges (two tensors read each other's bytes: silently wrong weights), ranges
past the end of the file (a reader allocates what the header says: 40 GB for a 1 KB file) or sizes
that disagree with the shape. :func:`read_safetensors_header` checks all of it before a single
tensor byte is read, and reports the first problem in one line naming the file and the tensor.
No torch here: the check is plain JSON and arithmetic (the lowest layer may use it).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transfuse.errors import UserError

#: Bytes per element of each safetensors dtype code.
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
#: Largest JSON header read (the official library's limit): a header is names, shapes and
#: offsets, a few MB for the largest models.
MAX_HEADER = 100_000_000
FIX = "re-save it with safetensors.torch.save_file or download it again"


@dataclass(frozen=True)
class Span:
    """Where one tensor's bytes lie: absolute byte offset ``start`` in the file and ``nbytes``."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int


def _fail(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {problem}; {FIX}")


def _entry(path: Path, name: str, info: Any, data_len: int, n: int) -> Span:
    where = f"tensor {name[:80]!r}"
    if not isinstance(info, dict):
        raise _fail(path, f"{where} is not described by a JSON object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise _fail(path, f"{where} has no {', '.join(missing)} in the header")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _fail(path, f"{where} has unknown dtype {str(dtype)[:20]!r} (valid: {', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise _fail(path, f"{where} has an invalid shape (a list of non-negative integers is needed)")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise _fail(path, f"{where} has invalid data_offsets (need [begin, end] with 0 <= begin <= end)")
    begin, end = offsets
    numel = 1
    for s in shape:
        numel *= s
    if end - begin != numel * DTYPE_SIZES[dtype]:
        raise _fail(path, f"{where} holds {end - begin} bytes but dtype {dtype} x shape {shape} "
                          f"needs {numel * DTYPE_SIZES[dtype]}")
    if end > data_len:
        raise _fail(path, f"the bytes of {where} end at byte {8 + n + end} but the file has only "
                          f"{8 + n + data_len} bytes (truncated)")
    return Span(dtype, tuple(shape), 8 + n + begin, end - begin)


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Span], dict[str, Any]]:
    """The tensors of a safetensors file (name -> :class:`Span`, in header order) and its
    ``__metadata__``. A missing file, a header that is too long, not JSON or not an object, an entry
    without dtype/shape/data_offsets, a size that is not dtype size x prod(shape), a range past the
    end of the file and overlapping ranges are each a one-line :class:`UserError`."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _fail(path, f"not a safetensors file ({size} bytes, shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise _fail(path, f"not a safetensors file (header length {n} bytes, file {size} bytes, "
                                  f"limit {MAX_HEADER})")
            raw = f.read(n)
    except OSError as e:
        raise UserError(f"{path}: cannot read the file ({e.strerror or e}); check the path and its "
                        "permissions") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"not a safetensors file (the header is not JSON: {str(e)[:80]})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"not a safetensors file (the header is a JSON {type(header).__name__}, "
                          "not an object)")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise _fail(path, "its __metadata__ is not a JSON object")
    data_len = size - 8 - n
    spans = {name: _entry(path, name, info, data_len, n) for name, info in header.items()}
    ordered = sorted(spans.items(), key=lambda kv: (kv[1].start, kv[1].nbytes))
    prev_name, prev_end = None, 0
    for name, s in ordered:
        if s.nbytes and s.start < prev_end:
            raise _fail(path, f"tensor {name[:80]!r} overlaps tensor {str(prev_name)[:80]!r} (their "
                              "data_offsets share bytes)")
        if s.nbytes:
            prev_name, prev_end = name, s.start + s.nbytes
    return spans, meta


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise the one-line :class:`UserError` of :func:`read_safetensors_header` for a bad file;
    call it before handing the file to ``safetensors.load_file``."""
    read_safetensors_header(path)
