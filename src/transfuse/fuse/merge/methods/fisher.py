"""Fisher-weighted averaging (Matena and Raffel 2022) with diagonal Fisher information per model."""

from __future__ import annotations

import torch
from torch import Tensor

from transfuse.fuse.merge.method import as_weights, merge_method
from transfuse.fuse.merge.methods.linear import weighted_average


@merge_method("fisher", paper="https://arxiv.org/abs/2111.09832", pretty_name="Fisher merging")
def fisher(tensors: list[Tensor], fisher: list[Tensor] | None, weight: list[float] = 1.0,  # type: ignore[assignment]
           min_fisher: float = 1e-6) -> Tensor:
    """``sum_i w_i F_i x_i / sum_i w_i F_i`` elementwise, ``F_i`` floored at ``min_fisher``.

    Each model entry names its Fisher file (``models[].fisher``: safetensors with the same tensor
    names, e.g. from ``estimate.diagonal_fisher``). A tensor without Fisher values in every model
    gets the plain weighted average, which is also what equal Fisher values give.
    """
    if fisher is None:
        return weighted_average(tensors, weight, normalize=True)
    w = as_weights(weight, tensors[0])
    f = torch.stack([fi.to(tensors[0].dtype) for fi in fisher]).clamp(min=0) + min_fisher
    return (w * f * torch.stack(tensors)).sum(0) / (w * f).sum(0)
