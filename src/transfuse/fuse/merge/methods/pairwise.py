"""Merges of a base model and one other model: NearSwap and Arcee Fusion (mergekit's semantics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from transfuse.fuse.merge.method import merge_method

QUANTILES = (0.25, 0.5, 0.75)


@merge_method("nearswap", paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
              pretty_name="NearSwap", min_models=1, max_models=1, elementwise=True)
def nearswap(tensors: list[Tensor], base_tensor: Tensor, t: float) -> Tensor:
    """Take the other model's value where it is close to the base: weight
    ``clamp(t / |base - x|, 0, 1)`` on ``x`` (|base - x| floored at 1e-6), the rest on the base."""
    a, b = base_tensor, tensors[0]
    w = (t / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    return w * b + (1 - w) * a


def quantiles(x: Tensor, qs: tuple[float, ...] = QUANTILES) -> list[Tensor]:
    """Order statistics ``sorted(x)[int(q * (n - 1))]`` (mergekit's index rule, its float32
    arithmetic), each found in linear time with ``kthvalue``; exact for any size."""
    flat = x.reshape(-1)
    idx = (torch.tensor(qs, dtype=torch.float32) * (flat.numel() - 1)).long().tolist()
    return [torch.kthvalue(flat, i + 1).values for i in idx]


@merge_method("arcee_fusion", paper="https://www.arcee.ai/blog/meet-mergekit-v0-1-0",
              pretty_name="Arcee Fusion", min_models=1, max_models=1)
def arcee_fusion(tensors: list[Tensor], base_tensor: Tensor) -> Tensor:
    """Keep the other model's change only where it matters: importance ``|x - base| * KL(softmax(x)
    || softmax(base))`` (softmax and KL along the last dimension), kept where it reaches
    ``median + 1.5 * IQR`` of the tensor's importances."""
    base, x = base_tensor, tensors[0]
    p = F.softmax(x, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    importance = (x - base).abs() * kl
    del p, q, kl
    q1, median, q3 = quantiles(importance)
    mask = (importance >= median + 1.5 * (q3 - q1)).to(x.dtype)
    return base + (x - base) * mask
