"""Atomic file writes: a crash never leaves a half-written file in a run folder."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0o666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: Why this process must not write (a follower rank of a distributed run), or None.
_writes_forbidden: str | None = None


def forbid_writes(reason: str | None) -> None:
    """From now on every write through this module raises (``reason`` names the process, e.g.
    ``"rank 1 of a distributed run"``); ``None`` allows writes again. A follower rank of a
    distributed run sets it, so that a writer its pipeline forgot to skip fails loudly instead of
    racing rank 0 for the same file."""
    global _writes_forbidden
    _writes_forbidden = reason


def _check_writable(path: Path) -> None:
    if _writes_forbidden is not None:
        raise RuntimeError(f"internal error: {_writes_forbidden} must not write {str(path)!r} (only rank 0 "
                           "writes the run folder and the caches)")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    _check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_folder(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the folder ``src`` to a new folder ``dst``. Unlike ``shutil.copytree``, which gathers
    every failure into one ``shutil.Error`` without an errno, the first failed copy raises its own
    ``OSError`` (so that a full disk is reported as one)."""
    import shutil

    src, dst = Path(src), Path(dst)
    _check_writable(dst)
    dst.mkdir(parents=True)
    for p in sorted(src.rglob("*")):
        q = dst / p.relative_to(src)
        if p.is_dir() and not p.is_symlink():
            q.mkdir(exist_ok=True)
        else:
            shutil.copy2(p, q, follow_symlinks=False)


#: errno values of a full disk, a full quota and a file over the file-size limit (RLIMIT_FSIZE)
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full_message(e: OSError) -> str | None:
    """The one-line error for a write that failed for lack of space, or None for other errors."""
    if e.errno not in DISK_FULL:
        return None
    where = f" writing {e.filename!r}" if e.filename else ""
    return (f"out of disk space{where} ({e.strerror}); free some space (or raise the file-size limit), "
            "then continue with 'transfuse resume RUN_DIR': finished steps are kept")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_default) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    import io as _io

    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    import io as _io

    buf = _io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())
