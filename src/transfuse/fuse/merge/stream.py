"""Bounded-memory I/O for the merge engine: ranged reads, inline hashing, pre-laid-out shard writes.

- :class:`Reader` reads any element range of a tensor with ``os.preadv`` into fresh memory (no
  memory map, so nothing read stays in the process's resident set) and, when asked, hashes each
  file (sha256) in a thread that follows the reads: the engine reads every file front to back, so
  the hasher reads the bytes again from the page cache right after, never from disk twice, and
  runs on a second core (bytes skipped, such as headers, are hashed on the way; whatever is
  left is hashed at the end).
- :func:`shard_layout` fixes every output shard's header from known names, dtypes and shapes, so
  each piece of a tensor is written at its final offset as soon as it is computed.
- :class:`Pipeline` overlaps reading (a prefetch thread, bounded by a byte budget) and writing (a
  writer thread, bounded queue) with the computation in the caller's thread. Reads, writes,
  hashing and torch kernels all release the GIL.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge.tensor_io import CODES, OutEntry, TensorEntry

_GAP_PIECE = 1 << 24
_DONE = object()  # end-of-queue marker of the hashing and writing threads


class _SeqHash:
    """sha256 of one file, hashed front to back up to the furthest offset asked for so far."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.pos = 0

    def fill(self, fd: int, upto: int) -> None:
        while self.pos < upto:
            piece = os.pread(fd, min(_GAP_PIECE, upto - self.pos), self.pos)
            if not piece:
                break
            self.h.update(piece)
            self.pos += len(piece)


class Reader:
    """Reads tensor slices by element range; keeps one descriptor per file; optional sha256.

    With ``hash_files``, a hashing thread follows the reads: each read queues its file's end
    offset and the thread hashes the file up to there from the page cache (the bytes were just
    read), so hashing overlaps the merge on a second core instead of adding to the read thread's
    time, and no buffer handed to the caller is shared with the hasher."""

    def __init__(self, hash_files: Iterable[Path] = ()):
        self._fds: dict[Path, int] = {}
        self._hashes = {Path(p): _SeqHash() for p in hash_files}
        self._lock = threading.Lock()
        self._hash_jobs: queue.Queue[Any] = queue.Queue()
        self._hash_error: BaseException | None = None
        self._hasher: threading.Thread | None = None
        if self._hashes:
            self._hasher = threading.Thread(target=self._hash_all, name="merge-hash", daemon=True)
            self._hasher.start()

    def _fd(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            return fd

    def _hash_all(self) -> None:
        while True:
            job = self._hash_jobs.get()
            try:
                if job is _DONE:
                    return
                if self._hash_error is None:
                    h, fd, end = job
                    h.fill(fd, end)
            except BaseException as e:  # noqa: BLE001  (raised by sha256())
                self._hash_error = e
            finally:
                self._hash_jobs.task_done()

    def read(self, entry: TensorEntry, first: int = 0, count: int | None = None) -> Tensor:
        """Elements ``[first, first + count)`` of ``entry`` (flat, in its dtype), in fresh memory."""
        size = entry.torch_dtype.itemsize
        numel = entry.nbytes // size if size else 0
        count = numel - first if count is None else count
        nbytes = count * size
        buf = torch.empty(nbytes, dtype=torch.uint8)
        start = entry.start + first * size
        view = memoryview(buf.numpy()) if nbytes else memoryview(b"")
        fd = self._fd(entry.file)
        got = 0
        while got < nbytes:
            n = os.preadv(fd, [view[got:]], start + got)
            if n <= 0:
                raise UserError(f"{entry.file}: truncated safetensors file (a tensor's bytes are "
                                "missing); re-download or re-save it")
            got += n
        h = self._hashes.get(entry.file)
        if h is not None and nbytes:
            self._hash_jobs.put((h, fd, start + nbytes))
        return buf.view(entry.torch_dtype)

    def sha256(self, path: Path) -> str:
        """The finished sha256 of ``path`` (hashes whatever part of it was never read)."""
        self._hash_jobs.join()
        if self._hash_error is not None:
            raise self._hash_error
        h = self._hashes[Path(path)]
        h.fill(self._fd(Path(path)), os.path.getsize(path))
        return h.h.hexdigest()

    def close(self) -> None:
        if self._hasher is not None:
            self._hash_jobs.put(_DONE)
            self._hasher.join()
            self._hasher = None
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def shard_layout(entries: list[OutEntry], metadata: dict[str, str] | None = None
                 ) -> tuple[bytes, dict[str, int]]:
    """A safetensors header for ``entries`` in order, and each tensor's absolute byte offset."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    rel = {}
    for e in entries:
        header[e.name] = {"dtype": CODES[e.dtype], "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}
        rel[e.name] = offset
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as safetensors does
    head = struct.pack("<Q", len(raw)) + raw
    return head, {k: len(head) + v for k, v in rel.items()}


class _Budget:
    """Bytes in flight between the prefetch thread and the consumer (one oversized item allowed)."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self.cond = threading.Condition()
        self.stopped = False

    def acquire(self, n: int) -> bool:
        with self.cond:
            while not self.stopped and self.used and self.used + n > self.capacity:
                self.cond.wait()
            self.used += n
            return not self.stopped

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()




class Pipeline:
    """Prefetch ``load(item)`` for ``items`` in a thread; write byte tensors at offsets in another.

    ``load`` returns ``(value, nbytes)``; at most ``prefetch_bytes`` of loaded values wait to be
    consumed (one bigger value may, alone). Use as a context manager; iterate to get
    ``(item, value)`` pairs in order; call :meth:`write` with an open descriptor and an offset.
    """

    def __init__(self, items: list[Any], load: Callable[[Any], tuple[Any, int]],
                 prefetch_bytes: int, write_queue: int = 4):
        self._items, self._load = items, load
        self._budget = _Budget(prefetch_bytes)
        self._ready: queue.Queue[Any] = queue.Queue()
        self._writes: queue.Queue[Any] = queue.Queue(maxsize=write_queue)
        self._write_error: BaseException | None = None
        self._reader = threading.Thread(target=self._read_all, name="merge-read", daemon=True)
        self._writer = threading.Thread(target=self._write_all, name="merge-write", daemon=True)

    def __enter__(self) -> Self:
        self._reader.start()
        self._writer.start()
        return self

    def _read_all(self) -> None:
        try:
            for item in self._items:
                if self._budget.stopped:
                    return
                value, nbytes = self._load(item)
                if not self._budget.acquire(nbytes):
                    return
                self._ready.put((item, value, nbytes))
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, raised there)
            self._ready.put(e)
            return
        self._ready.put(_DONE)

    def _write_all(self) -> None:
        while True:
            job = self._writes.get()
            if job is _DONE:
                return
            if self._write_error is not None:
                continue
            fd, offset, data = job
            try:
                view = memoryview(data.numpy())
                done = 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], offset + done)
            except BaseException as e:  # noqa: BLE001  (raised by the next write or at exit)
                self._write_error = e

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        while True:
            got = self._ready.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            item, value, nbytes = got
            yield item, value
            del value
            self._budget.release(nbytes)

    def write(self, fd: int, offset: int, tensor: Tensor) -> None:
        """Queue ``tensor``'s bytes (CPU, contiguous) for writing at ``offset`` of ``fd``."""
        if self._write_error is not None:
            raise self._write_error
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._writes.put((fd, offset, data))

    def __exit__(self, *exc: object) -> None:
        self._budget.stop()
        while self._reader.is_alive():  # unblock a reader waiting on a full budget
            try:
                self._ready.get(timeout=0.05)
            except queue.Empty:
                pass
        self._writes.put(_DONE)
        self._writer.join()
        if self._write_error is not None and exc[0] is None:
            raise self._write_error
