"""Read one tensor at a time from safetensors files; write shards tensor by tensor.

The safetensors format is an 8-byte little-endian header length, a JSON header (name -> dtype,
shape, byte offsets) and the raw bytes. Parsing it here (instead of ``safe_open``, which memory
maps whole files, so every byte read stays in the process's resident set until the file closes)
lets the engine read exactly one tensor with ``readinto`` and keep its memory at a few tensors.
Nothing in a safetensors file can execute code. Output shards are laid out up front (names,
dtypes, shapes are known before any tensor is computed), so each tensor is written as soon as it
is computed: the write buffer is one tensor, whatever the shard size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.tensorfile import read_safetensors_header

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie in a safetensors file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The tensors in a safetensors file and its ``__metadata__``; a bad file is a UserError.

    The header is checked first (:func:`transfuse.tensorfile.read_safetensors_header`: ranges
    inside the file, not overlapping, sizes equal to dtype x shape), so no read can allocate more
    than the file holds or take another tensor's bytes."""
    spans, meta = read_safetensors_header(path)
    entries = {}
    for name, s in spans.items():
        if s.dtype not in DTYPES:
            raise UserError(f"{path}: tensor {name[:80]!r} has dtype {s.dtype}, which merging does not "
                            f"support; convert it to one of {', '.join(DTYPES)}")
        entries[name] = TensorEntry(Path(path), s.dtype, s.shape, s.start, s.nbytes)
    return entries, meta


def read_tensor(entry: TensorEntry) -> Tensor:
    """Read one tensor into fresh memory (exactly its bytes, no mapping of the file)."""
    buf = torch.empty(entry.nbytes, dtype=torch.uint8)
    with open(entry.file, "rb", buffering=0) as f:
        f.seek(entry.start)
        got = f.readinto(buf.numpy()) if entry.nbytes else 0
    if got != entry.nbytes:
        raise UserError(f"{entry.file}: truncated safetensors file (a tensor's bytes are missing)")
    return buf.view(entry.torch_dtype).reshape(entry.shape)


@dataclass(frozen=True)
class OutEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(entries: Iterable[OutEntry], max_shard_bytes: int) -> list[list[OutEntry]]:
    """Pack tensors in order into shards of at most ``max_shard_bytes`` (a bigger tensor alone)."""
    shards: list[list[OutEntry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards if shards[0] else []
