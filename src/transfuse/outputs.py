"""Safe output folders for the commands that write a folder of their own (``transfuse data ...
--out``, ``transfuse export --out``): written into a temporary sibling and renamed into place,
into a new or empty folder only, or, with ``--overwrite``, over a folder holding nothing but what
the same command wrote there before (its marker lists those names). Never into a folder that is,
or holds, one of the command's inputs. (Run folders: :class:`~transfuse.artifacts.store.RunFolder`;
merge outputs: :mod:`transfuse.fuse.merge.engine`; the same rules.)"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transfuse.errors import UserError
from transfuse.io import atomic_write_json

#: Written last into an output folder: the command that wrote it and the names it wrote.
OUTPUT_MARKER = ".transfuse-output.json"


def _names(paths: list[str]) -> str:
    return ", ".join(map(repr, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def written_by(out: Path, tool: str) -> set[str]:
    """The names in ``out`` that ``transfuse TOOL`` wrote (its marker's list), or an empty set."""
    try:
        info = json.loads((out / OUTPUT_MARKER).read_text(encoding="utf-8"))
        if info.get("written_by") == f"transfuse {tool}":
            return {str(n) for n in info["files"]} | {OUTPUT_MARKER}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return set()


def check_output(out: Path, tool: str, inputs: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """Refuse ``--out`` when writing there could replace a file the command did not write: an
    existing file, a folder that is, holds or lies inside an input, a non-empty folder without ``--overwrite``,
    and with it a folder holding anything but a previous ``transfuse TOOL`` output."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; give a new folder")
    target = out.resolve()
    for p in inputs:
        q = Path(p).resolve()
        if q == target or target in q.parents:
            raise UserError(f"--out {out} holds the input {p} of transfuse {tool}; writing there would replace "
                            "it: give an output folder outside the inputs")
        if q in target.parents:
            raise UserError(f"--out {out} is inside the input folder {p} of transfuse {tool}; its files would "
                            "mix with the input's: give an output folder outside the inputs")
    try:
        present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as e:
        raise UserError(f"--out {out} cannot be read ({e.strerror}); give another folder") from None
    if not present:
        return
    ours = written_by(out, tool)
    if not overwrite:
        hint = (f"it holds an earlier 'transfuse {tool}' output: pass --overwrite to replace it, or give "
                "another folder" if ours else "give a new or empty folder, so that none of its files are replaced")
        raise UserError(f"--out {out} exists and is not empty; {hint}")
    foreign = [n for n in present if n not in ours]
    if foreign:
        raise UserError(f"--out {out} holds {_names(foreign)}, which transfuse {tool} did not write; --overwrite "
                        f"only replaces a previous 'transfuse {tool}' output: move them or give another folder")


def start_output(out: Path, tool: str, inputs: Iterable[str | os.PathLike], overwrite: bool) -> Path:
    """Check ``out`` and create the temporary folder (a new sibling of ``out``) to write into."""
    inputs = list(inputs)
    check_output(out, tool, inputs, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def finish_output(tmp: Path, out: Path, tool: str, inputs: Iterable[str | os.PathLike], overwrite: bool) -> Path:
    """Mark ``tmp`` as ``transfuse TOOL``'s output and move it to ``out``, replacing a previous
    output there (checked again: only what the command wrote is removed)."""
    atomic_write_json(tmp / OUTPUT_MARKER, {"written_by": f"transfuse {tool}",
                                            "files": sorted(p.name for p in tmp.iterdir())})
    if out.exists():
        check_output(out, tool, inputs, overwrite)
        if any(out.iterdir()):
            shutil.rmtree(out)
        else:
            out.rmdir()
    os.replace(tmp, out)
    return out


def abandon_output(tmp: Path) -> None:
    """Remove the temporary folder of a command that failed (it holds only what it wrote)."""
    shutil.rmtree(tmp, ignore_errors=True)
