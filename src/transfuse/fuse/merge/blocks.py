"""Shared building blocks: sparsify (magnitude, outliers, random), rescale, sign consensus, disjoint mean.

TIES, DARE and breadcrumbs are configurations of these blocks (see ``methods/task_arithmetic.py``).
Thresholds take linear time: ``torch.kthvalue`` finds the k-th largest magnitude, ties at the
threshold are broken by position (first come first kept), so exactly ``k`` entries are kept.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from torch import Tensor

from transfuse.errors import UserError

RescaleNorm = Literal["l1", "l2", "linf"]


def check_density(density: float, what: str = "density") -> float:
    if not 0.0 <= density <= 1.0:
        raise UserError(f"parameter {what!r} must be in [0, 1], got {density!r}")
    return density


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of exactly ``k`` largest entries of ``scores`` (position breaks ties)."""
    n = scores.numel()
    flat = scores.reshape(-1)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    thr = torch.kthvalue(flat, n - k + 1).values  # k-th largest, linear time
    mask = flat > thr
    equal = flat == thr
    room = k - int(mask.sum())
    mask |= equal & (torch.cumsum(equal, 0) <= room)
    return mask.view(scores.shape)


def magnitude_mask(x: Tensor, density: float) -> Tensor:
    """Keep the ``int(density * numel)`` entries of largest magnitude (TIES' trim step)."""
    check_density(density)
    if density >= 1:
        return torch.ones_like(x, dtype=torch.bool)
    return top_k_mask(x.abs(), int(density * x.numel()))


def outlier_mask(x: Tensor, density: float, gamma: float) -> Tensor:
    """Model breadcrumbs: drop the ``gamma`` largest magnitudes and the smallest, keep ``density``.

    As mergekit: ``n_top = int(gamma*n)``, ``n_bot = n - int(density*n) - n_top`` (when negative,
    fewer outliers are dropped). Unlike mergekit, ``n_top == 0`` keeps the top (mergekit's slice
    ``[n_bot:-0]`` keeps nothing there, so small tensors lost their whole task vector).
    """
    check_density(density)
    check_density(gamma, "gamma")
    n = x.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - target - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    mag = x.abs()
    return top_k_mask(mag, n - n_bot) & ~top_k_mask(mag, n_top)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` that is the same on every machine, process and device."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_mask(shape: torch.Size, density: float, seed: int) -> Tensor:
    """Bernoulli(density) keep-mask drawn on the CPU from ``seed`` (identical on any device)."""
    check_density(density)
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(torch.full(tuple(shape), float(density)), generator=g).bool()


def probability_mask(probs: Tensor, seed: int) -> Tensor:
    """Keep-mask with entry-wise keep probabilities ``probs``, drawn on the CPU from ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(probs.detach().to("cpu", torch.float32), generator=g).bool()


def magprune_probabilities(x: Tensor, density: float, epsilon: float) -> Tensor:
    """DELLA's MagPrune keep probabilities: ``density - epsilon`` for the smallest magnitude of a
    row up to ``density + epsilon`` for the largest, linear in the magnitude's rank.

    As mergekit: ranks run along dim 1 (a 1-D tensor is one row), so the mean probability is
    ``density``. Equal magnitudes are ranked by position (mergekit's ``argsort`` breaks them
    arbitrarily); a rank axis of length 1 gets ``density`` (mergekit divides 0 by 0 there).
    """
    x2 = x.unsqueeze(0) if x.dim() < 2 else x
    order = torch.argsort(x2.abs(), dim=1, stable=True)
    ranks = order.argsort(dim=1, stable=True).to(torch.float32)  # 0-based: rank - min rank
    span = x2.shape[1] - 1
    rank_norm = ranks / span if span > 0 else torch.full_like(ranks, 0.5)
    return ((density - epsilon) + rank_norm.clamp(0, 1) * 2 * epsilon).reshape(x.shape)


def rescale_masked(x: Tensor, mask: Tensor, norm: RescaleNorm | None, eps: float = 1e-7) -> Tensor:
    """``x * mask``, scaled to keep ``x``'s l1 / l2 / max norm (mergekit's DARE rescale is l1).

    The DARE paper rescales by ``1 / density``; matching the l1 norm is that in expectation and
    exact per tensor. Norms below ``eps`` are left unscaled.
    """
    masked = x * mask.to(x.dtype)
    if norm is None:
        return masked
    if norm == "l1":
        before, after = x.abs().sum(), masked.abs().sum()
    elif norm == "l2":
        before, after = x.norm(), masked.norm()
    elif norm == "linf":
        before, after = x.abs().max(), masked.abs().max()
    else:
        raise UserError(f"rescale norm must be l1, l2 or linf, got {norm!r}")
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def sign_consensus(weighted: Tensor, method: Literal["sum", "count"] = "sum") -> Tensor:
    """TIES' elect step: mask of entries whose sign agrees with the elected sign per position.

    ``weighted`` is stacked ``[models, ...]``. ``sum`` elects the sign of the summed mass, ``count``
    the majority of signs; a zero total elects +. Zero entries never agree (they carry nothing).
    """
    sign = weighted.sign()
    total = weighted.sum(0) if method == "sum" else sign.sum(0)
    elected = torch.where(total >= 0, 1.0, -1.0).to(weighted.dtype)
    return sign == elected


def disjoint_mean(weighted: Tensor, weights: Tensor, mask: Tensor | None, normalize: bool) -> Tensor:
    """Sum of ``weighted`` over models where ``mask``; divided by the summed kept weights if asked.

    ``weights`` broadcasts against ``weighted``; positions no model keeps divide by 1.
    """
    if mask is None:
        mixed = weighted.sum(0)
        divisor = weights.sum(0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    else:
        m = mask.to(weighted.dtype)
        mixed = (weighted * m).sum(0)
        divisor = (weights * m).sum(0)
        divisor[divisor == 0] = 1
    return mixed / divisor if normalize else mixed
