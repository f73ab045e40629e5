"""Cut a backbone in two for cached partial fine-tuning: a frozen bottom, run once per item, and a
trainable top that runs on the bottom's cached activations.

``split_backbone(backbone, n_top)`` gives a :class:`Split`: ``bottom(batch)`` -> one activation per
item (a tensor, or a dict for text), and ``top``, a :class:`Backbone` whose inputs are those
activations and whose features equal the whole backbone's (the bottom in eval mode). After
training, :meth:`Split.merge` writes the top's weights back into a copy of the whole backbone, which
then ships and serves like any fine-tuned model.

Supported: BERT-style transformers encoders (``embeddings`` + ``encoder.layer``; ``n_top`` =
transformer layers) and timm's EfficientNet/MobileNet family (``conv_stem``, ``bn1``, ``blocks``;
``n_top`` = stages). Both tops reuse the model's own ``forward`` with the bottom's modules swapped
for pass-throughs, so masks, pooling and heads stay the library's own code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from transfuse.backbones.base import Backbone
from transfuse.errors import UserError


class _Passthrough(nn.Module):
    """Stands in for a model's embedding layer: returns ``inputs_embeds`` (the cached states)."""

    def forward(self, input_ids: Any = None, inputs_embeds: Any = None, **_: Any) -> Any:
        return inputs_embeds


@dataclass
class Split:
    """``bottom(batch)``: per-item activations (no grad, eval mode); ``top``: a backbone on them;
    ``merge(top)``: a copy of the whole backbone carrying ``top``'s trained weights."""

    bottom: Callable[[Any], list[Any]]
    top: Backbone
    merge: Callable[[Backbone], Backbone]
    n_top: int
    n_total: int


def split_backbone(backbone: Backbone, n_top: int) -> Split:
    """Split ``backbone`` so that the last ``n_top`` layers (text) or stages (images) train."""
    from transfuse.backbones.text.bert import TextBackbone
    from transfuse.backbones.timm_source import TimmBackbone

    if isinstance(backbone, TextBackbone) and hasattr(backbone.model, "encoder") \
            and hasattr(backbone.model.encoder, "layer") and hasattr(backbone.model, "embeddings"):
        return _split_text(backbone, n_top)
    if getattr(backbone, "scales", ()):
        raise UserError(f"backbone {backbone.spec or type(backbone).__name__}: partial fine-tuning cannot split "
                        "a backbone with the scales option (each size runs the whole network); leave scales out, "
                        "or use 'finetune' or 'lp_ft'")
    if isinstance(backbone, TimmBackbone) and all(hasattr(backbone.model, a) for a in ("conv_stem", "bn1", "blocks")):
        return _split_timm(backbone, n_top)
    raise UserError(
        f"backbone {backbone.spec or type(backbone).__name__}: partial fine-tuning supports BERT-style text "
        "encoders and timm EfficientNet/MobileNet models; use 'finetune' or 'lp_ft' for it"
    )


def _check_n(spec: str, n_top: int, total: int, unit: str) -> None:
    if not 1 <= n_top < total:
        raise UserError(f"train.partial.blocks={n_top} does not fit {spec}: it has {total} {unit}; "
                        f"give 1 to {total - 1}")


# -- text ------------------------------------------------------------------------------------------
class TextTop(Backbone):
    """The top ``n`` layers of a BERT-style encoder + the backbone's pooling, on cached hidden states
    (one ``{"hidden": (T, D)}`` per item, padded per batch)."""

    modality = "text"

    def __init__(self, model: nn.Module, pooling: str, feature_dim: int, first_layer: int, spec: str):
        super().__init__()
        self.model, self.pooling, self.feature_dim = model, pooling, feature_dim
        self.first_layer, self.spec = first_layer, spec

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from transfuse.backbones.text.bert import mean_pool

        mask = batch["attention_mask"]
        out = self.model(inputs_embeds=batch["hidden"], attention_mask=mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, mask)

    def collate(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(int(s["hidden"].shape[0]) for s in samples)
        dim = int(samples[0]["hidden"].shape[1])
        hidden = torch.zeros((len(samples), width, dim), dtype=samples[0]["hidden"].dtype)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for i, s in enumerate(samples):
            n = int(s["hidden"].shape[0])
            hidden[i, :n] = s["hidden"]
            mask[i, :n] = 1
        return {"hidden": hidden, "attention_mask": mask}

    def make_transform(self, train: bool = False, augment: Any = None) -> Callable[[Any], Any]:
        return _identity

    def preprocess_config(self) -> dict[str, Any]:
        return {"cached": "hidden states", "first_layer": self.first_layer}

    def layer_id(self, param_name: str) -> int:
        from transfuse.backbones.text.bert import _LAYER_RE

        m = _LAYER_RE.search(param_name)
        return self.first_layer + int(m.group(1)) + 1 if m else 0


def _identity(x: Any) -> Any:
    return x


def _split_text(backbone: Any, n_top: int) -> Split:
    model = backbone.model
    layers = model.encoder.layer
    total = len(layers)
    _check_n(backbone.spec, n_top, total, "transformer layers")
    cut = total - n_top

    def truncated(keep: nn.ModuleList, embeddings: nn.Module) -> nn.Module:
        saved_emb, saved_layers = model.embeddings, model.encoder.layer
        try:
            model.embeddings, model.encoder.layer = embeddings, keep
            return copy.deepcopy(model)
        finally:
            model.embeddings, model.encoder.layer = saved_emb, saved_layers

    lower = truncated(nn.ModuleList(layers[:cut]), model.embeddings).eval()
    for p in lower.parameters():
        p.requires_grad_(False)
    upper = truncated(nn.ModuleList(layers[cut:]), _Passthrough())
    top = TextTop(upper, backbone.pooling, backbone.feature_dim, cut, f"{backbone.spec}#top{n_top}")

    @torch.no_grad()
    def bottom(batch: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        mask = batch["attention_mask"]
        out = lower(input_ids=batch["input_ids"], attention_mask=mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return [{"hidden": hidden[i, : int(mask[i].sum())].clone()} for i in range(hidden.shape[0])]

    def merge(trained: Backbone) -> Backbone:
        return _merged(backbone, trained, "encoder.layer.", cut)

    return Split(bottom=bottom, top=top, merge=merge, n_top=n_top, n_total=total)


# -- images (timm EfficientNet / MobileNet family) ------------------------------------------------
class TimmTop(Backbone):
    """The last ``n`` stages of a timm EfficientNet-style model + its head convolution and pooling,
    on cached ``(C, H, W)`` activations, or ``(V, C, H, W)`` for ``V`` cached views of an item
    (view 0 the plain one): training draws one view per item and epoch, evaluation takes view 0."""

    modality = "image"

    def __init__(self, model: nn.Module, feature_dim: int, first_stage: int, spec: str):
        super().__init__()
        self.model, self.feature_dim, self.first_stage, self.spec = model, feature_dim, first_stage, spec

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.contiguous(memory_format=torch.channels_last))

    def make_transform(self, train: bool = False, augment: Any = None) -> Callable[[Any], Any]:
        return _any_view if train else _plain_view

    def preprocess_config(self) -> dict[str, Any]:
        return {"cached": "activations", "first_stage": self.first_stage}

    def layer_id(self, param_name: str) -> int:
        parts = param_name.split(".")
        if "blocks" in parts:
            return self.first_stage + int(parts[parts.index("blocks") + 1])
        return 1000


def _plain_view(x: torch.Tensor) -> torch.Tensor:
    return x[0] if x.dim() == 4 else x


def _any_view(x: torch.Tensor) -> torch.Tensor:
    """One of an item's cached views, uniformly (the torch generator: seeded by the fit)."""
    return x[int(torch.randint(x.shape[0], ()))] if x.dim() == 4 else x


def _split_timm(backbone: Any, n_top: int) -> Split:
    model = backbone.model
    stages = model.blocks
    total = len(stages)
    _check_n(backbone.spec, n_top, total, "stages")
    cut = total - n_top
    lower = nn.Sequential(copy.deepcopy(model.conv_stem), copy.deepcopy(model.bn1),
                          *[copy.deepcopy(s) for s in list(stages)[:cut]]).eval()
    for p in lower.parameters():
        p.requires_grad_(False)
    saved = model.conv_stem, model.bn1, model.blocks
    try:
        model.conv_stem, model.bn1, model.blocks = nn.Identity(), nn.Identity(), nn.Sequential(*list(stages)[cut:])
        upper = copy.deepcopy(model)
    finally:
        model.conv_stem, model.bn1, model.blocks = saved
    top = TimmTop(upper, backbone.feature_dim, cut, f"{backbone.spec}#top{n_top}")

    @torch.no_grad()
    def bottom(batch: torch.Tensor) -> list[torch.Tensor]:
        out = lower(batch.contiguous(memory_format=torch.channels_last))
        return [t.contiguous().clone() for t in out]

    def merge(trained: Backbone) -> Backbone:
        return _merged(backbone, trained, "blocks.", cut)

    return Split(bottom=bottom, top=top, merge=merge, n_top=n_top, n_total=total)


def _merged(whole: Backbone, trained: Backbone, prefix: str, cut: int) -> Backbone:
    """A copy of ``whole`` with every tensor of ``trained.model`` written back: keys under
    ``prefix`` shift by ``cut`` (the top's layer 0 is the whole model's layer ``cut``)."""
    out = copy.deepcopy(whole)
    out._weights_hash = None
    state: dict[str, torch.Tensor] = {}
    for key, t in trained.model.state_dict().items():
        if key.startswith(prefix):
            i, _, rest = key[len(prefix):].partition(".")
            key = f"{prefix}{cut + int(i)}.{rest}"
        state[key] = t
    missing, unexpected = out.model.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"partial fine-tune: {len(unexpected)} trained tensors have no place, e.g. {unexpected[0]}")
    return out
