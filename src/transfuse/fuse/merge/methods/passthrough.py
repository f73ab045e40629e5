"""Passthrough: one model's tensors, optionally scaled (mergekit's semantics)."""

from __future__ import annotations

from torch import Tensor

from transfuse.fuse.merge.method import merge_method


@merge_method("passthrough", paper="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
              pretty_name="Passthrough", min_models=1, max_models=1, elementwise=True)
def passthrough(tensors: list[Tensor], scale: list[float] = 1.0) -> Tensor:  # type: ignore[assignment]
    """The model's tensor times its ``scale`` (1: unchanged; a filter list can zero some tensors)."""
    return tensors[0] if scale[0] == 1 else tensors[0] * scale[0]
