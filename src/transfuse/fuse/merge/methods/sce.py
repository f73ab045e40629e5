"""SCE (Wan et al. 2024, FuseChat): select, calculate, erase (mergekit's semantics)."""

from __future__ import annotations

import torch
from torch import Tensor

from transfuse.fuse.merge import blocks
from transfuse.fuse.merge.method import merge_method


def variance_mask(deltas: Tensor, select_topk: float) -> Tensor:
    """Keep the ``int(select_topk * nonzero)`` positions whose task vectors vary most across models
    (variance over models; ``nonzero`` counts positions of nonzero variance)."""
    blocks.check_density(select_topk, "select_topk")
    if select_topk >= 1:
        return torch.ones_like(deltas[0], dtype=torch.bool)
    var = torch.var(deltas, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var)) * select_topk)
    return blocks.top_k_mask(var.abs(), k)


@merge_method("sce", paper="https://arxiv.org/abs/2408.07990", pretty_name="SCE")
def sce(tensors: list[Tensor], base_tensor: Tensor, select_topk: float = 1.0,
        int8_mask: bool = False) -> Tensor:
    """Select the ``select_topk`` highest-variance positions; weight each model by its (selected)
    task vector's mean square, normalised to sum 1; erase entries against the elected sign; the
    weighted mean of the rest is added to the base."""
    deltas = torch.stack([x - base_tensor for x in tensors], dim=0)
    if select_topk < 1:
        deltas = deltas * variance_mask(deltas, select_topk).to(deltas.dtype).unsqueeze(0)
    agree = blocks.sign_consensus(deltas, "sum").to(deltas.dtype)
    w = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)
    total = torch.sum(w).item()
    w = torch.ones_like(w) / w.shape[0] if abs(total) < 1e-6 else w / total
    w = w.view(-1, *([1] * (deltas.dim() - 1))) * agree
    return base_tensor + (deltas * w).sum(dim=0) / torch.sum(w, dim=0).clamp(min=1e-6)
