"""RAM and RAM+ (Reinforced Agent Merging, arXiv 2601.13572; mergekit's semantics).

A task-vector entry counts as changed when its magnitude exceeds ``epsilon``; an entry changed by one
model only keeps that model's value, one changed by several gets their mean (no dilution by the
models that left it alone). RAM+ (tensor-local) also boosts each model's unique entries by
``1 + r * min(shared / unique, alpha)``, its counts of shared and unique changed entries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transfuse.fuse.merge.method import merge_method


def _ram_parts(tensors: list[Tensor], base: Tensor, epsilon: float
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    tv = torch.stack([x - base for x in tensors], dim=0).view(len(tensors), -1)
    nonzero = tv.abs() > epsilon
    counts = nonzero.sum(dim=0, keepdim=True)
    return tv, nonzero, counts, counts > 1, counts == 1


@merge_method("ram", paper="https://arxiv.org/abs/2601.13572",
              pretty_name="Reinforced Agent Merging", elementwise=True)
def ram(tensors: list[Tensor], base_tensor: Tensor, epsilon: float = 1e-5) -> Tensor:
    """Entries changed by one model keep its change; shared ones get the mean of those changing."""
    tv, nonzero, counts, overlap, unique = _ram_parts(tensors, base_tensor, epsilon)
    tvz = tv * nonzero
    merged = ((tvz * unique) + (tvz * overlap / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base_tensor + merged.reshape_as(base_tensor)


@merge_method("ramplus_tl", paper="https://arxiv.org/abs/2601.13572",
              pretty_name="Reinforced Agent Merging Plus (tensor-local)")
def ramplus_tl(tensors: list[Tensor], base_tensor: Tensor, r: float = 0.1, alpha: float = 0.2,
               epsilon: float = 1e-5) -> Tensor:
    """RAM with each model's unique entries scaled by ``1 + r * clamp(shared / unique, 0, alpha)``."""
    tv, nonzero, counts, overlap, unique = _ram_parts(tensors, base_tensor, epsilon)
    shared_n = (nonzero & overlap).sum(dim=1)
    unique_n = (nonzero & unique).sum(dim=1)
    rho = shared_n / unique_n.clamp(min=epsilon)
    boost = 1 + r * rho.clamp(min=0, max=alpha)
    tvz = tv * nonzero
    merged = ((tvz * unique * boost.unsqueeze(-1))
              + (tvz * overlap / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base_tensor + merged.reshape_as(base_tensor)
