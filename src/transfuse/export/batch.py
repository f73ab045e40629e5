"""Batch prediction from the command line: what ``transfuse predict`` reads (files, folders, text
files, a CSV/JSONL table, literal texts) and what it writes (TSV with a header, CSV, JSON lines).

Inputs become ``(name, item)`` pairs: ``name`` is what the output's ``input`` column shows (a file's
path as given, ``notes.txt:3`` for line 3 of a text file, the text itself for ``--text``), ``item``
what the model reads (a file path, or a text). An input that cannot become an item (a missing file
for a text model, a folder without inputs) gets an error record like an unreadable image does.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from transfuse.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif"}
TEXT_SUFFIXES = {".txt"}
SUFFIXES = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES, "text": TEXT_SUFFIXES}
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
OUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass
class Inputs:
    """What to predict: ``names`` and ``items`` in order, and ``errors`` ``{position: reason}``
    for the names that could not become an item (their item is ``None``)."""

    names: list[str] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)

    def add(self, name: str, item: Any = None, error: str | None = None) -> None:
        if error is not None:
            self.errors[len(self.names)] = error
        self.names.append(name)
        self.items.append(item)


def _is_file(s: str) -> bool:
    try:
        return Path(s).is_file()
    except (OSError, ValueError):
        return False


def _is_dir(s: str) -> bool:
    try:
        return Path(s).is_dir()
    except (OSError, ValueError):
        return False


def _folder_files(folder: Path, modality: str) -> list[Path]:
    """The folder's files of the modality (recursively, sorted; hidden files and folders skipped)."""
    sfx = SUFFIXES[modality]
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in sfx
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def _text_lines(name: str, path: Path, out: Inputs) -> None:
    """A text file: one text per non-blank line, named ``FILE:LINE``."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        out.add(name, error=f"not UTF-8 text (byte {e.start}); save it as UTF-8")
        return
    except OSError as e:
        out.add(name, error=f"cannot read: {e.strerror or e}")
        return
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        out.add(name, error="empty text file (no non-blank line)")
    for n, line in lines:
        out.add(f"{name}:{n}", line)


def _one(arg: str, modality: str, out: Inputs) -> None:
    if _is_dir(arg):
        files = _folder_files(Path(arg), modality)
        if not files:
            kinds = ", ".join(sorted(s.lstrip(".") for s in SUFFIXES[modality]))
            out.add(arg, error=f"folder holds no {modality} files ({kinds})")
        for f in files:
            _one(str(f), modality, out)
        return
    if modality != "text":
        out.add(arg, arg)  # predict checks the file itself (missing, empty, corrupt, ...)
        return
    if not _is_file(arg):
        out.add(arg, error="file not found (give literal texts with --text)")
        return
    if Path(arg).suffix.lower() in TABLE_FORMATS:
        out.add(arg, error="a table; give it with --csv (and --column)")
        return
    _text_lines(arg, Path(arg), out)


def _table(path: Path, column: str | None, modality: str, out: Inputs) -> None:
    """The ``column`` of a CSV/TSV/JSONL table: texts, or file paths (relative ones from the
    table's folder)."""
    from transfuse.data.text import _table_rows

    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"--csv {str(path)!r}: unknown table format {path.suffix!r}; give a .csv, .tsv or .jsonl file")
    if not path.is_file():
        raise UserError(f"--csv {str(path)!r} is not a file; give the path of a .csv, .tsv or .jsonl table")
    col = column or ("text" if modality == "text" else "path")
    header: list[str] | None = None
    seen: set[str] = set()
    found = False
    for line, row, problem in _table_rows(path, fmt):
        if row is not None and "__header__" in row:
            header = row["__header__"]
            if col not in header:
                raise UserError(f"--csv {str(path)!r} has no column {col!r}; its columns: {', '.join(header)}; "
                                "name the right one with --column")
            continue
        name = f"{path}:{line}"
        if problem is not None:
            out.add(name, error=problem)
            continue
        assert row is not None
        seen.update(row)
        if col not in row:
            out.add(name, error=f"no {col!r} field")
            continue
        found = True
        value = row[col]
        if value is None or (isinstance(value, str) and not value.strip()):
            out.add(name, error=f"empty {col!r} field")
        elif modality == "text":
            out.add(name, str(value))
        else:
            f = Path(str(value))
            out.add(str(value), str(f if f.is_absolute() else path.parent / f))
    if fmt == "jsonl" and not found and seen:
        raise UserError(f"--csv {str(path)!r} has no field {col!r}; its fields: {', '.join(sorted(seen))}; "
                        "name the right one with --column")


def _multimodal_table(path: Path, columns: dict[str, list[str]], out: Inputs) -> None:
    """A multimodal model's table: per row ``{modality: value}`` from the model's columns (file
    paths relative to the table's folder; several text columns joined with ``" | "``)."""
    from transfuse.data.multimodal import join_texts
    from transfuse.data.text import _table_rows

    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None or not path.is_file():
        raise UserError(f"--csv {str(path)!r}: give an existing .csv, .tsv or .jsonl table")
    need = [c for cs in columns.values() for c in cs]
    for line, row, problem in _table_rows(path, fmt):
        if row is not None and "__header__" in row:
            missing = [c for c in need if c not in row["__header__"]]
            if missing:
                raise UserError(f"--csv {str(path)!r} has no column {', '.join(map(repr, missing))}; this multimodal "
                                f"model reads {', '.join(need)} (its columns: {', '.join(row['__header__'])})")
            continue
        name = f"{path}:{line}"
        if problem is not None or row is None:
            out.add(name, error=problem or "unreadable row")
            continue
        item: dict[str, str] = {}
        for m, cs in columns.items():
            values = [str(row.get(c) or "").strip() for c in cs]
            if m == "text":
                item[m] = join_texts(values)
            elif values[0]:
                f = Path(values[0])
                item[m] = str(f if f.is_absolute() else path.parent / f)
        out.add(name, item)


def gather(args: Sequence[str], modality: str, texts: Sequence[str] = (), table: Path | None = None,
           column: str | None = None, columns: dict[str, list[str]] | None = None) -> Inputs:
    """``transfuse predict``'s inputs in order: the positional arguments (files; folders expanded
    to their files of the model's modality; for a text model a text file is one text per line),
    then ``--text`` texts, then the ``--csv`` table's column. A multimodal model reads only a
    table: its ``columns`` (``{modality: [column, ...]}``) of each row."""
    if modality == "multimodal":
        if args or texts or column is not None or table is None:
            need = ", ".join(c for cs in (columns or {}).values() for c in cs)
            raise UserError(f"a multimodal model reads a table: give --csv FILE with the columns {need} "
                            "(no file arguments, --text or --column)")
        out = Inputs()
        _multimodal_table(Path(table), columns or {}, out)
        if not out.names:
            raise UserError(f"--csv {str(table)!r} has no rows")
        return out
    if column is not None and table is None:
        raise UserError("--column applies to --csv; give the table with --csv FILE")
    if texts and modality != "text":
        raise UserError(f"--text is for text models; this model takes {modality} inputs: give files or folders")
    from transfuse.export.predict import check_modality

    check_modality([a for a in args if _is_file(a)], modality)
    out = Inputs()
    for a in args:
        _one(a, modality, out)
    for t in texts:
        out.add(t, t)
    if table is not None:
        _table(Path(table), column, modality, out)
    if not out.names:
        raise UserError("no inputs; give files or folders, --text TEXT (text models) or --csv FILE")
    return out


def output_format(out: Path | None, as_json: bool) -> str:
    if out is None:
        return "jsonl" if as_json else "tsv"
    fmt = OUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"--out {str(out)!r}: unknown format {out.suffix!r}; name the file .csv, .tsv or .jsonl")
    return fmt


def write(names: list[str], classes: list[str], proba: np.ndarray, errors: dict[int, str], fmt: str,
          stream: TextIO) -> None:
    """Records in ``fmt``: ``jsonl`` (``input``, ``label``, ``proba``; ``input``, ``error``), ``tsv``
    (a header ``input label confidence``, then a row each; an error row is ``INPUT ERROR reason``)
    or ``csv`` (``input, label, confidence, error, p_CLASS...``)."""
    if fmt == "jsonl":
        for i, (name, p) in enumerate(zip(names, proba)):
            if i in errors:
                rec: dict[str, Any] = {"input": name, "error": errors[i]}
            else:
                k = int(p.argmax())
                rec = {"input": name, "label": classes[k], "proba": {c: float(v) for c, v in zip(classes, p)}}
            stream.write(json.dumps(rec) + "\n")
        return
    if fmt == "tsv":
        stream.write("input\tlabel\tconfidence\n")
        for i, (name, p) in enumerate(zip(names, proba)):
            name = name.replace("\t", " ").replace("\n", " ")
            if i in errors:
                stream.write(f"{name}\tERROR\t{errors[i]}\n")
            else:
                k = int(p.argmax())
                stream.write(f"{name}\t{classes[k]}\t{p[k]:.4f}\n")
        return
    w = csv.writer(stream, lineterminator="\n")
    w.writerow(["input", "label", "confidence", "error", *(f"p_{c}" for c in classes)])
    for i, (name, p) in enumerate(zip(names, proba)):
        if i in errors:
            w.writerow([name, "", "", errors[i], *([""] * len(classes))])
        else:
            k = int(p.argmax())
            w.writerow([name, classes[k], f"{p[k]:.6g}", "", *(f"{v:.6g}" for v in p)])


def write_file(path: Path, names: list[str], classes: list[str], proba: np.ndarray, errors: dict[int, str],
               fmt: str) -> None:
    from transfuse.io import atomic_write_text

    buf = io.StringIO()
    write(names, classes, proba, errors, fmt, buf)
    atomic_write_text(path, buf.getvalue())


def write_stdout(names: list[str], classes: list[str], proba: np.ndarray, errors: dict[int, str], fmt: str) -> None:
    write(names, classes, proba, errors, fmt, sys.stdout)
