"""The one interface every pretrained model offers to the pipeline."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class Backbone(nn.Module, ABC):
    """A pretrained feature extractor: raw input -> model input -> ``(B, feature_dim)`` features.

    Subclasses set ``spec`` (e.g. ``"bundled:efficientnet_lite0"``), ``modality`` and
    ``feature_dim``, and implement :meth:`forward`, :meth:`make_transform` and
    :meth:`preprocess_config`. The classifier of the pretrained model is removed (head reset):
    the pipeline puts its own head on top of the features.
    """

    spec: str = ""
    modality: str = "image"
    feature_dim: int = 0
    #: False for backbones that cannot be fine-tuned (e.g. ONNX Runtime graphs).
    trainable: bool = True
    #: Why ``torch.onnx.export`` cannot hold this backbone (None: it can); export refuses with it.
    onnx_refusal: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._weights_hash: str | None = None

    @abstractmethod
    def forward(self, batch: Any) -> torch.Tensor:
        """Features for a collated batch, shape ``(B, feature_dim)``."""

    @abstractmethod
    def preprocess_config(self) -> dict[str, Any]:
        """JSON-serialisable preprocessing (size, mean/std, interpolation, sample rate, ...)."""

    @abstractmethod
    def make_transform(self, train: bool = False, augment: Any = None) -> Callable[[Any], Any]:
        """Function turning one decoded input (PIL image, waveform, text) into a model input."""

    def collate(self, samples: list[Any]) -> Any:
        """Batch model inputs (default: stack tensors)."""
        return torch.stack(samples)

    def batch_to(self, batch: Any, device: torch.device | str) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(device)
        if isinstance(batch, dict):
            return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return batch

    def param_groups(self, lr: float, layer_decay: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer groups with layer-wise lr decay: the last layer gets ``lr``, each earlier
        layer ``layer_decay`` times the next one. Subclasses define :meth:`layer_ids`."""
        groups: dict[int, list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups.setdefault(self.layer_id(name), []).append(p)
        if not groups:
            return []
        top = max(groups)
        return [
            {"params": ps, "lr": lr * layer_decay ** (top - lid), "weight_decay": weight_decay,
             "layer_id": lid}
            for lid, ps in sorted(groups.items())
        ]

    def layer_id(self, param_name: str) -> int:
        """Depth index of a parameter for layer-wise lr decay (default: all one layer)."""
        return 0

    def weights_hash(self) -> str:
        """sha256 over parameter names, shapes and values (computed once; part of cache keys)."""
        if self._weights_hash is None:
            h = hashlib.sha256(self.spec.encode())
            for name, t in sorted(self.state_dict().items()):
                h.update(name.encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_hash = h.hexdigest()[:32]
        return self._weights_hash

    def cache_key(self) -> str:
        """Content address of this backbone's features: weights + preprocessing."""
        payload = json.dumps(
            {"weights": self.weights_hash(), "pre": self.preprocess_config()}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:24]
