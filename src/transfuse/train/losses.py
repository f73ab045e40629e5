"""Classification losses: cross-entropy with label smoothing and class weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transfuse.errors import UserError

ClassWeight = Literal["none", "balanced"] | Sequence[float]


def class_weights_from_labels(y: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's ``"balanced"`` weights: ``n_samples / (n_classes * count[c])``.

    A class with no sample gets weight 0 (it never is a target, so nothing is lost).
    """
    y = np.asarray(y, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise UserError(f"labels must lie in [0, {n_classes}); got {int(y.min())}..{int(y.max())}")
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = y.size / (n_classes * counts[present])
    return weights


def resolve_class_weights(
    spec: ClassWeight, labels: Sequence[int] | np.ndarray, n_classes: int
) -> torch.Tensor | None:
    """Turn a ``class_weight`` setting into a float tensor (``None`` for ``"none"``)."""
    if isinstance(spec, str):
        if spec == "none":
            return None
        if spec == "balanced":
            return torch.tensor(class_weights_from_labels(labels, n_classes), dtype=torch.float32)
        raise UserError(
            f"class_weight: unknown value {spec!r}; use 'none', 'balanced' or a list of "
            f"{n_classes} positive numbers"
        )
    weights = [float(w) for w in spec]
    if len(weights) != n_classes or any(not np.isfinite(w) or w < 0 for w in weights):
        raise UserError(
            f"class_weight: expected {n_classes} non-negative numbers (one per class), got {weights}"
        )
    return torch.tensor(weights, dtype=torch.float32)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy; with weights, the mean is over ``weight[target]`` (PyTorch's rule).

    With smoothing ``e`` over ``C`` classes, each sample's target distribution is
    ``(1 - e) * onehot + e / C``.
    """
    return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=label_smoothing)


class ClassificationLoss(nn.Module):
    """:func:`cross_entropy` as a module; the weights are a buffer so they follow ``.to(device)``."""

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"label_smoothing: must be in [0, 1), got {label_smoothing}")
        self.register_buffer("weight", weight, persistent=False)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.weight, self.label_smoothing)
