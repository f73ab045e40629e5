"""mergekit's ``slices:`` for ``passthrough``: stack layer ranges of several models into one model.

Architecture-agnostic: the layer stack is found from the tensor names (the prefix before the first
numeric component, ``model.layers`` in ``model.layers.3.mlp.up_proj.weight``; one stack only, as
mergekit's ``slices:`` needs one module). Output layer ``j`` is the ``j``-th layer of the slices in
order, renumbered. Tensors outside the stack come from the first slice's model when they are
embeddings (the name has ``embed``, ``wte`` or ``wpe``: what comes before the layers) and from the
last slice's model otherwise (final norm, LM head), as mergekit's ``pre_weights`` and
``post_weights`` for the architectures it knows (with the first and last slice's parameters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transfuse.errors import UserError
from transfuse.fuse.merge.config import MergeConfig

_LAYER = re.compile(r"^(?P<prefix>.+?)\.(?P<index>\d+)\.(?P<rest>.+)$")
_PRE = ("embed", "wte", "wpe")
#: config.json keys that hold the number of layers (transformers' names), first present wins
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


@dataclass(frozen=True)
class SlicedTensor:
    """One output tensor of a sliced merge: which input tensor of which model, for which slice."""

    out: str
    name: str
    model: int  # index into config.models
    slice: int  # whose parameters apply: the first slice's for embeddings, the last's after


def layer_stack(names: list[str]) -> tuple[str, dict[int, list[str]]]:
    """(prefix, {layer index: [rest of the name]}) of the one stack of numbered layers."""
    stacks: dict[str, dict[int, list[str]]] = {}
    for n in names:
        m = _LAYER.match(n)
        if m:
            stacks.setdefault(m["prefix"], {}).setdefault(int(m["index"]), []).append(m["rest"])
    if len(stacks) != 1:
        found = ", ".join(sorted(stacks)) or "none"
        raise UserError(f"slices: need exactly one stack of numbered layers in the tensor names, "
                        f"found {found}; merge whole models under models: instead")
    return next(iter(stacks.items()))


def _outside(names: list[str]) -> list[str]:
    return [n for n in names if not _LAYER.match(n)]


def plan_slices(cfg: MergeConfig, names_per_model: list[list[str]]) -> list[SlicedTensor]:
    """Every output tensor of ``cfg.slices`` (models indexed as ``cfg.models``)."""
    index = {m.name: i for i, m in enumerate(cfg.models)}
    stacks = [layer_stack(names) for names in names_per_model]
    out: list[SlicedTensor] = []
    first, last = index[cfg.slices[0].model], index[cfg.slices[-1].model]
    prefix0 = stacks[first][0]
    out += [SlicedTensor(n, n, first, 0) for n in _outside(names_per_model[first])
            if any(p in n for p in _PRE)]
    layer = 0
    for k, s in enumerate(cfg.slices):
        i = index[s.model]
        prefix, layers = stacks[i]
        if s.end > len(layers) or sorted(layers) != list(range(len(layers))):
            raise UserError(f"slices[{k}]: layer_range [{s.start}, {s.end}] but model {s.model!r} "
                            f"has layers 0..{len(layers) - 1} under {prefix!r}; fix layer_range")
        if prefix != prefix0 or sorted(layers[s.start]) != sorted(stacks[first][1][0]):
            raise UserError(f"slices[{k}]: model {s.model!r} has other layers ({prefix!r}) than "
                            f"{cfg.slices[0].model!r} ({prefix0!r}); slice models of one architecture")
        for src in range(s.start, s.end):
            out += [SlicedTensor(f"{prefix0}.{layer}.{rest}", f"{prefix}.{src}.{rest}", i, k)
                    for rest in layers[src]]
            layer += 1
    out += [SlicedTensor(n, n, last, len(cfg.slices) - 1)
            for n in _outside(names_per_model[last]) if not any(p in n for p in _PRE)]
    return out


def n_layers(cfg: MergeConfig) -> int:
    return sum(s.end - s.start for s in cfg.slices)
