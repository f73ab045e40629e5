"""``ModelSpec``: what a saved model is and how to rebuild it (``model.json``, one per folder).

This module is the only place ``model.json`` is read or written. Tensors live beside it in
safetensors files named by ``files``; nothing in a model folder is executable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from transfuse.errors import UserError
from transfuse.io import atomic_write_text

SPEC_FILE = "model.json"
FORMAT_VERSION = 2
Kind = Literal["probe", "finetune", "bag", "raw", "ensemble", "features", "joint"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneRef(_Frozen):
    """A backbone as the registry builds it, and the hash of the weights it was trained with."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    weights_hash: str | None = None
    modality: str
    feature_dim: int | None = None
    block: str | None = None  # feature fusion: the block name of its features


class ModelSpec(_Frozen):
    """A servable model. ``kind``: ``probe`` (head on a frozen backbone), ``finetune`` (whole
    network), ``bag`` (a fine-tuned candidate's fold networks, probabilities averaged; ``files``
    ``fold0``, ``fold1``, ... in this folder, ``members`` the candidate), ``raw`` (a raw-input
    estimator such as TF-IDF), ``ensemble`` (members' probabilities combined; ``members`` are
    candidate names of the same run), ``features`` (a head over several backbones' features),
    ``joint`` (several backbones fine-tuned under one head)."""

    format_version: int = FORMAT_VERSION
    kind: Kind
    candidate: str
    modality: str
    classes: list[str]
    backbones: list[BackboneRef] = Field(default_factory=list)
    members: list[str] = Field(default_factory=list)
    method: str | None = None
    strategy: str | None = None
    estimator: dict[str, Any] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    temperature: float | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def backbone(self) -> BackboneRef:
        if len(self.backbones) != 1:
            raise UserError(f"model {self.candidate!r} ({self.kind}) has {len(self.backbones)} backbones, not one")
        return self.backbones[0]


def save_spec(folder: Path, spec: ModelSpec) -> None:
    atomic_write_text(folder / SPEC_FILE, spec.model_dump_json(indent=2) + "\n")


def load_spec(folder: Path) -> ModelSpec:
    """The spec of ``folder``; a one-line error for a missing, foreign or older file."""
    f = Path(folder) / SPEC_FILE
    if not f.is_file():
        raise UserError(f"{str(folder)!r} has no {SPEC_FILE}; give a finished run folder or a candidate "
                        "folder of one (candidates/NAME)")
    try:
        text = f.read_text(encoding="utf-8")
        import json

        raw = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{str(f)!r} is not readable JSON ({type(e).__name__}); rerun the candidate") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{str(f)!r} was written by another transfuse version (model format "
                        f"{raw.get('format_version') if isinstance(raw, dict) else None}, this one reads "
                        f"{FORMAT_VERSION}); rerun the experiment with this version")
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{str(f)!r}: key {key!r}: {first['msg']}; the file is damaged, rerun the candidate") from None
