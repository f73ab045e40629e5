"""Image data sources: class folders, CSV/JSONL manifests, Fashion-MNIST (IDX) and the emoji set.

Every file-based source decodes each file once at load time; a file that cannot be decoded goes
to ``Dataset.quarantined`` with the reason, and the run goes on. Odd modes (greyscale, palette,
RGBA, 16-bit, CMYK, ...) are not errors: :func:`to_rgb` converts them. Registered in
:data:`transfuse.data.registry.DATA_SOURCES` as ``folder``, ``manifest``, ``fashion_mnist`` and
``emoji``; each has the signature ``(path: str | None, **options) -> Dataset``.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transfuse import paths
from transfuse.data.base import Dataset, Quarantined, csv_field_limit, field_problem, is_file
from transfuse.data.registry import DATA_SOURCES
from transfuse.errors import UserError

# ---------------------------------------------------------------------------------------------
# decoding


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparent images (RGBA, LA, PA, palette or RGB/L with a transparency key) are composited
    on white. 16-bit modes are scaled to 8 bits (``round(v / 257)``, so 65535 -> 255), never
    clipped. Mode ``I`` (32-bit int) is taken as 8-bit when all values lie in 0..255, else as
    16-bit. Mode ``F`` is taken as 0..1 when its maximum is at most 1, else as 0..255.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 255:
            grey = arr.astype(np.uint8)
        else:
            grey = ((np.clip(arr, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        grey = np.clip(np.nan_to_num(np.rint(arr)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to PIL RGB (EXIF orientation applied, see :func:`to_rgb`)."""
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An in-memory uint8 array (H, W) or (H, W, 3) as PIL RGB (the Fashion-MNIST loader)."""
    return to_rgb(Image.fromarray(np.asarray(arr, dtype=np.uint8)))


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"RIFF", "WEBP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)  # fmt: skip


def check_image(path: str | os.PathLike) -> str | None:
    """Decode ``path`` once; ``None`` when it is a usable image, else the reason it is not."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            img.verify()  # structure and checksums (PNG CRCs)
        with Image.open(path) as img:
            img.load()  # full decode: catches truncated and corrupt pixel data
            to_rgb(img)
        return None
    except PermissionError:
        return "unreadable: permission denied"
    except FileNotFoundError:
        return "file not found"
    except Image.DecompressionBombError as e:
        return f"too large to decode safely: {e}"
    except UnidentifiedImageError:
        with open(path, "rb") as f:
            head = f.read(512)
        if _looks_like_text(head):
            return "not an image: the file holds text"
        fmt = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
        if fmt:
            return f"corrupt image: a {fmt} file whose header cannot be parsed"
        return "not an image: unrecognised file format"
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncat" in msg.lower():
            return f"truncated image: {msg}"
        return f"corrupt image: {msg}"


def check_images(files: Sequence[str | os.PathLike]) -> list[str | None]:
    """:func:`check_image` over many files (threads: Pillow decodes without the GIL)."""
    if len(files) < 64:
        return [check_image(f) for f in files]
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(check_image, files, chunksize=32))


# ---------------------------------------------------------------------------------------------
# shared assembly


def _build(
    name: str,
    entries: list[tuple[str, str, str]],
    quarantined: list[Quarantined],
    class_order: Sequence[str] | None = None,
    group_dirs: dict[str, str] | None = None,
    validate: bool = True,
) -> Dataset:
    """Validate ``(file, id, label)`` entries and assemble an image Dataset.

    A class left with no valid image is reported (one quarantined entry for the class, at its
    folder when ``group_dirs`` names one) and dropped.
    """
    reasons = check_images([e[0] for e in entries]) if validate else [None] * len(entries)
    kept: list[tuple[str, str, str]] = []
    n_bad: dict[str, int] = {}
    for (file, id_, label), reason in zip(entries, reasons):
        if reason is None:
            kept.append((file, id_, label))
        else:
            quarantined.append(Quarantined(file, reason))
            n_bad[label] = n_bad.get(label, 0) + 1
    present = {lab for _, _, lab in kept}
    order = list(class_order) if class_order is not None else sorted({e[2] for e in entries})
    for lab in order:
        if lab not in present and lab in n_bad:
            where = (group_dirs or {}).get(lab, f"class {lab!r}")
            quarantined.append(
                Quarantined(
                    where, f"class {lab!r} has no valid images ({n_bad[lab]} quarantined); class dropped"
                )
            )
    classes = [c for c in order if c in present]
    index = {c: i for i, c in enumerate(classes)}
    return Dataset(
        modality="image",
        items=[f for f, _, _ in kept],
        labels=np.array([index[lab] for _, _, lab in kept], dtype=np.int64),
        classes=classes,
        ids=[i for _, i, _ in kept],
        loader=load_image,
        quarantined=quarantined,
        name=name,
    )


def _require_dir(path: str | None, what: str, option_hint: str) -> Path:
    if not path:
        raise UserError(f"data.path is missing: the {what} source needs {option_hint}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"data.path {str(p)!r} is not a folder; the {what} source needs {option_hint}")
    return p


def _hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name in ("Thumbs.db", "desktop.ini")


def _hidden_below(f: Path, top: Path) -> bool:
    """True when ``f`` or a folder between ``top`` and ``f`` is hidden."""
    return any(part.startswith(".") for part in f.relative_to(top).parts) or _hidden(f)


# ---------------------------------------------------------------------------------------------
# folder


@DATA_SOURCES.register("folder")
def folder(path: str | None, *, validate: bool = True) -> Dataset:
    """Images in ``path/<class>/...`` (one sub-folder per class, searched recursively).

    Classes are the sub-folder names in sorted order; ids are paths relative to ``path``. Hidden
    files are skipped; any other file that does not decode as an image is quarantined, as are
    files lying directly in ``path`` and empty class folders.
    """
    root = _require_dir(path, "folder", "a folder with one sub-folder per class")
    quarantined: list[Quarantined] = []
    entries: list[tuple[str, str, str]] = []
    class_dirs: dict[str, str] = {}
    for child in sorted(root.iterdir()):
        if _hidden(child):
            continue
        if not child.is_dir():
            quarantined.append(
                Quarantined(
                    str(child), "file outside a class folder; move it into a sub-folder named after its class"
                )
            )
            continue
        files = sorted(f for f in child.rglob("*") if f.is_file() and not _hidden_below(f, child))
        class_dirs[child.name] = str(child)
        if not files:
            quarantined.append(
                Quarantined(
                    str(child), f"empty class folder: class {child.name!r} has no files; class dropped"
                )
            )
            continue
        entries += [(str(f), f.relative_to(root).as_posix(), child.name) for f in files]
    if not entries:
        raise UserError(
            f"data.path {str(root)!r} holds no image files; the folder source expects {root}/<class>/<image files>"
        )
    return _build(root.name, entries, quarantined, group_dirs=class_dirs, validate=validate)


# ---------------------------------------------------------------------------------------------
# manifest


def _read_manifest_rows(p: Path, fmt: str) -> list[dict[str, Any]]:
    if fmt == "csv":
        with open(p, newline="", encoding="utf-8-sig") as f, csv_field_limit(os.path.getsize(p)):
            return list(csv.DictReader(f))
    rows = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{p}:{n}: not valid JSON ({e.msg}); each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise UserError(
                    f'{p}:{n}: each line must be a JSON object like {{"path": ..., "label": ...}}'
                )
            rows.append(row)
    return rows


@DATA_SOURCES.register("manifest")
def manifest(
    path: str | None,
    *,
    path_column: str = "path",
    label_column: str = "label",
    format: str | None = None,
    validate: bool = True,
) -> Dataset:
    """Images listed in a CSV (with a header) or JSONL manifest of ``path, label`` rows.

    Relative paths are resolved against the manifest's folder; ids are the paths as written.
    ``format`` is ``csv`` or ``jsonl`` (default: from the file suffix). Rows whose file is missing
    or whose label is empty are quarantined. Classes are the labels in sorted order.
    """
    if not path:
        raise UserError("data.path is missing: the manifest source needs a .csv or .jsonl file")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(
            f"data.path {str(p)!r} does not exist; the manifest source needs a .csv or .jsonl file"
        )
    fmt = format or {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(p.suffix.lower())
    if fmt not in ("csv", "jsonl"):
        raise UserError(
            f"data.options.format {format or p.suffix!r} for {p.name} is not supported; valid: csv, jsonl"
        )
    rows = _read_manifest_rows(p, fmt)
    if not rows:
        raise UserError(f"manifest {p} has no rows")
    cols = list(rows[0].keys())
    for key, col in (("path_column", path_column), ("label_column", label_column)):
        if col not in cols:
            raise UserError(
                f"manifest {p} has no column {col!r}; its columns are {', '.join(map(repr, cols))}; "
                f"set data.options.{key}"
            )
    quarantined: list[Quarantined] = []
    entries: list[tuple[str, str, str]] = []
    for n, row in enumerate(rows, 2 if fmt == "csv" else 1):
        raw, label = row.get(path_column), row.get(label_column)
        raw = "" if raw is None else str(raw).strip()
        label = "" if label is None else str(label).strip()
        if not raw:
            quarantined.append(Quarantined(f"{p}:{n}", f"row has an empty {path_column!r}"))
            continue
        problem = field_problem(raw, "path") or field_problem(label, "label")
        if problem:
            quarantined.append(Quarantined(f"{p}:{n}", problem))
            continue
        f = Path(raw).expanduser()
        f = f if f.is_absolute() else p.parent / f
        if not label:
            quarantined.append(Quarantined(str(f), f"row {n} of {p.name} has an empty {label_column!r}"))
            continue
        if not is_file(f):
            quarantined.append(Quarantined(str(f), f"file not found (row {n} of {p.name})"))
            continue
        entries.append((str(f), raw, label))
    if not entries:
        raise UserError(f"manifest {p} lists no existing image files ({len(quarantined)} rows quarantined)")
    return _build(p.stem, entries, quarantined, validate=validate)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX)

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_INSTALL = "sudo apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped), checking its header against its size."""
    p = Path(path)
    try:
        with gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {p}: {e}; reinstall it ({FASHION_MNIST_INSTALL})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"{p} is not an IDX file (bad magic number); reinstall it ({FASHION_MNIST_INSTALL})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise UserError(
            f"IDX file {p} is truncated or corrupt (header says {shape}); reinstall it ({FASHION_MNIST_INSTALL})"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def locate_fashion_mnist(path: str | None = None) -> Path:
    """The folder holding Fashion-MNIST's IDX files, or a UserError with the install command."""
    candidates = (
        [Path(path).expanduser()]
        if path
        else [*map(Path, FASHION_MNIST_DIRS), paths.data_dir() / "fashion-mnist"]
    )
    for d in candidates:
        if _idx_file(d, "train-images-idx3-ubyte") is not None:
            return d
    where = " or ".join(str(c) for c in candidates)
    raise UserError(
        f"Fashion-MNIST IDX files not found in {where}; install them with `{FASHION_MNIST_INSTALL}` "
        f"(or `transfuse data fashion-mnist`), or set data.path to a folder holding train-images-idx3-ubyte.gz"
    )


def _idx_file(d: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (d / name).is_file():
            return d / name
    return None


def _pick_classes(requested: Iterable[str] | None, valid: Sequence[str], key: str) -> list[str]:
    if requested is None:
        return list(valid)
    if isinstance(requested, str):
        requested = [requested]
    lookup = {v.lower(): v for v in valid}
    picked = []
    for r in requested:
        if str(r).lower() not in lookup:
            raise UserError(f"data.options.{key}: unknown class {r!r}; valid: {', '.join(valid)}")
        picked.append(lookup[str(r).lower()])
    if not picked:
        raise UserError(
            f"data.options.{key} is empty; leave it out for all classes or name some of: {', '.join(valid)}"
        )
    return [v for v in valid if v in picked]  # canonical order


def sample_per_class(labels: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``max_per_class`` items per label, drawn with ``seed``, sorted."""
    if max_per_class is None:
        return np.arange(len(labels))
    if max_per_class < 1:
        raise UserError(f"data.options.max_per_class must be >= 1, got {max_per_class}")
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        parts.append(idx if len(idx) <= max_per_class else rng.choice(idx, max_per_class, replace=False))
    return np.sort(np.concatenate(parts)) if parts else np.arange(0)


@DATA_SOURCES.register("fashion_mnist")
def fashion_mnist(
    path: str | None = None,
    *,
    split: str = "train",
    max_per_class: int | None = None,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """Fashion-MNIST from its IDX files (Debian ``dataset-fashion-mnist`` by default).

    ``split`` is ``train`` (60k) or ``test`` (10k); ``max_per_class`` draws a fixed random subset
    per class (by ``seed``); ``classes`` keeps some classes (names as in
    :data:`FASHION_MNIST_CLASSES`, case-insensitive). Items are 28x28 uint8 arrays, ids are
    ``"train:123"`` (the index in the original file).
    """
    if split not in ("train", "test"):
        raise UserError(f"data.options.split {split!r} is not valid; valid: train, test")
    d = locate_fashion_mnist(path)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(d, f"{prefix}-images-idx3-ubyte") or d / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(_idx_file(d, f"{prefix}-labels-idx1-ubyte") or d / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"Fashion-MNIST files in {d} do not match (images {images.shape}, labels {labels.shape})"
        )
    keep_names = _pick_classes(classes, FASHION_MNIST_CLASSES, "classes")
    keep_codes = [FASHION_MNIST_CLASSES.index(c) for c in keep_names]
    in_classes = np.flatnonzero(np.isin(labels, keep_codes))
    idx = in_classes[sample_per_class(labels[in_classes], max_per_class, seed)]
    remap = {code: i for i, code in enumerate(keep_codes)}
    arrays = np.ascontiguousarray(images[idx])  # a copy: drop the reference to the full file
    return Dataset(
        modality="image",
        items=list(arrays),
        labels=np.array([remap[int(c)] for c in labels[idx]], dtype=np.int64),
        classes=keep_names,
        ids=[f"{split}:{i}" for i in idx.tolist()],
        loader=array_to_image,
        name=f"fashion_mnist-{split}",
    )


# ---------------------------------------------------------------------------------------------
# emoji (npm emoji-datasource-google)

EMOJI_PACKAGE = "emoji-datasource-google"
EMOJI_VERSION = "16.0.0"
#: The 8 categories used by the demo and benchmarks (1,520 images without skin-tone variants).
EMOJI_8_CATEGORIES = (
    "Activities", "Animals & Nature", "Flags", "Food & Drink",
    "Objects", "Smileys & Emotion", "Symbols", "Travel & Places",
)  # fmt: skip


def emoji_npm_prefix() -> Path:
    return paths.home() / "npm"


def emoji_install_command() -> list[str]:
    return ["npm", "install", "--prefix", str(emoji_npm_prefix()), f"{EMOJI_PACKAGE}@{EMOJI_VERSION}"]


def locate_emoji(path: str | None = None) -> Path:
    """The emoji-datasource-google package folder (holding emoji.json), or a UserError."""
    d = Path(path).expanduser() if path else emoji_npm_prefix() / "node_modules" / EMOJI_PACKAGE
    if (d / "emoji.json").is_file():
        return d
    if path and (d / "node_modules" / EMOJI_PACKAGE / "emoji.json").is_file():
        return d / "node_modules" / EMOJI_PACKAGE
    raise UserError(
        f"emoji data not found in {d}; install it with `{' '.join(emoji_install_command())}` "
        f"(or `transfuse data emoji`), or set data.path to the {EMOJI_PACKAGE} folder"
    )


@DATA_SOURCES.register("emoji")
def emoji(
    path: str | None = None,
    *,
    categories: Sequence[str] | None = None,
    include_skin_tones: bool = False,
    min_per_class: int = 10,
    size: int = 64,
    validate: bool = True,
) -> Dataset:
    """Google's Noto emoji (``img/google/<size>/*.png``), labelled by ``emoji.json`` ``category``.

    ``categories`` keeps some categories (default: all with at least ``min_per_class`` images;
    smaller ones are reported in ``quarantined`` and dropped). Skin-tone variants are left out
    unless ``include_skin_tones``. Ids are file names relative to the image folder.
    """
    d = locate_emoji(path)
    img_dir = d / "img" / "google" / str(size)
    if not img_dir.is_dir():
        valid = (
            sorted(p.name for p in (d / "img" / "google").iterdir() if p.name.isdigit())
            if (d / "img" / "google").is_dir()
            else []
        )
        raise UserError(
            f"data.options.size {size} has no image folder {img_dir}; valid sizes: {', '.join(valid)}"
        )
    with open(d / "emoji.json", encoding="utf-8") as f:
        meta = json.load(f)
    all_cats = sorted({e["category"] for e in meta})
    wanted = _pick_classes(categories, all_cats, "categories")
    quarantined: list[Quarantined] = []
    entries: list[tuple[str, str, str]] = []
    for e in meta:
        if e["category"] not in wanted or not e.get("has_img_google", True):
            continue
        images = [e["image"]]
        if include_skin_tones:
            images += [
                v["image"] for v in (e.get("skin_variations") or {}).values() if v.get("has_img_google", True)
            ]
        for name in images:
            f = img_dir / name
            if f.is_file():
                entries.append((str(f), name, e["category"]))
            else:
                quarantined.append(Quarantined(str(f), "listed in emoji.json but the file is missing"))
    counts = {c: 0 for c in wanted}
    for _, _, c in entries:
        counts[c] += 1
    small = {c for c, n in counts.items() if n < min_per_class}
    for c in sorted(small):
        quarantined.append(
            Quarantined(
                f"emoji category {c!r}",
                f"{counts[c]} images, fewer than min_per_class={min_per_class}; category dropped",
            )
        )
    entries = [e for e in entries if e[2] not in small]
    if not entries:
        raise UserError(
            f"no emoji left: every category in {', '.join(wanted)} has fewer than min_per_class={min_per_class} images"
        )
    return _build(
        f"emoji-{size}",
        entries,
        quarantined,
        class_order=[c for c in wanted if c not in small],
        validate=validate,
    )
