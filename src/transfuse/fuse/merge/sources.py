"""Resolve a model reference to its safetensors files and tensor index (nothing loaded yet).

Accepted: a ``.safetensors`` file; a folder with ``model.safetensors.index.json`` (sharded); a
folder with ``*.safetensors`` files (a transformers model folder, a transfuse run's model folder);
a hub id already in the local Hugging Face cache. Pickle checkpoints (``.bin``, ``.pt``, ``.pth``,
``.ckpt``) are refused: loading them can execute code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from transfuse.errors import UserError
from transfuse.fuse.merge.tensor_io import TensorEntry, read_header

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
INDEX_NAME = "model.safetensors.index.json"
#: Small files copied from the base (or first) model folder so the output loads like the input.
COPY_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
    "preprocessor_config.json", "added_tokens.json",
)


@dataclass
class Checkpoint:
    """One input model: where its tensors are; ``folder`` holds its config files, if any."""

    ref: str
    path: Path
    files: list[Path]
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    folder: Path | None = None

    def sha256(self) -> dict[str, str]:
        """sha256 of each weight file (name relative to the model path)."""
        out = {}
        for f in self.files:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    h.update(chunk)
            out[f.name] = h.hexdigest()
        return out


def _refuse_pickle(path: Path) -> None:
    raise UserError(
        f"{path}: pickle checkpoints are refused (loading them can execute code); convert it to "
        "safetensors (safetensors.torch.save_file(torch.load(p, weights_only=True), out))"
    )


def _hub_cache(ref: str) -> Path | None:
    if ref.count("/") != 1 or ref.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:
        return None


def _files_in(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise UserError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted({folder / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{index}: shard files missing: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            _refuse_pickle(pickles[0])
        raise UserError(f"{folder}: no .safetensors files or {INDEX_NAME} in this folder")
    return files


def open_checkpoint(ref: str, root: Path | None = None) -> Checkpoint:
    """Find ``ref`` (a path, relative to the cwd or ``root``, or a cached hub id) and index it."""
    candidates = [Path(ref).expanduser()]
    if root is not None and not Path(ref).is_absolute():
        candidates.append(root / ref)
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        path = _hub_cache(ref)
    if path is None:
        raise UserError(f"model {ref!r} not found: give a .safetensors file or a model folder "
                        "(a hub id works only when it is already in the local cache)")
    path = path.resolve()
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            _refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise UserError(f"{path}: expected a .safetensors file or a model folder")
        files, folder = [path], None
    else:
        files, folder = _files_in(path), path
    ckpt = Checkpoint(ref=ref, path=path, files=files, folder=folder)
    for f in files:
        entries, _ = read_header(f)
        dup = set(entries) & set(ckpt.tensors)
        if dup:
            raise UserError(f"{path}: tensor {sorted(dup)[0]!r} appears in two shards")
        ckpt.tensors.update(entries)
    return ckpt


def open_tensor_file(ref: str, root: Path | None = None) -> dict[str, TensorEntry]:
    """Index an auxiliary tensor file or folder (Fisher diagonals, Gram matrices)."""
    return dict(open_checkpoint(ref, root).tensors)
