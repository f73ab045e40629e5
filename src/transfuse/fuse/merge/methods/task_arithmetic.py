"""Task-vector methods: task arithmetic, TIES, DARE, breadcrumbs, DELLA (mergekit's semantics).

All are one recipe over task vectors ``d_i = x_i - base``: sparsify each ``d_i`` (none, magnitude,
random, outliers, magprune), weight it, optionally elect a sign per position and keep only agreeing entries,
sum (dividing by the kept weights when ``normalize``), scale by ``lambda`` and add to the base.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge import blocks
from transfuse.fuse.merge.method import TensorContext, as_weights, merge_method

Sparsify = Literal["magnitude", "random", "outliers", "magprune"] | None


def _random_seed(ctx: TensorContext | None, i: int) -> int:
    """The mask seed of model ``i`` for this tensor: the same on any device, order, process."""
    ctx = ctx or TensorContext()
    names = ctx.model_names or tuple(f"model{j}" for j in range(i + 1))
    return blocks.stable_seed(ctx.seed, ctx.name, names[i])


def _magprune_mask(d: Tensor, density: float, epsilon: float, seed: int, who: str) -> Tensor:
    if density <= 0:
        return torch.zeros_like(d, dtype=torch.bool)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise UserError(f"{who}: parameter 'epsilon' is {epsilon!r} with density {density!r}; "
                        "density - epsilon and density + epsilon must lie in (0, 1): lower "
                        "epsilon or move density")
    probs = blocks.magprune_probabilities(d, density, epsilon)
    return blocks.probability_mask(probs, seed).to(d.device)


def task_vector_merge(
    tensors: list[Tensor],
    base: Tensor,
    weight: list[float],
    *,
    density: list[float] | None = None,
    sparsify: Sparsify = None,
    consensus: Literal["sum", "count"] | None = None,
    normalize: bool = False,
    rescale: bool = False,
    lambda_: float = 1.0,
    gamma: list[float] | None = None,
    epsilon: list[float] | None = None,
    ctx: TensorContext | None = None,
    who: str = "task arithmetic",
) -> Tensor:
    """The generalized task-arithmetic recipe shared by every method in this module."""
    deltas = []
    for i, x in enumerate(tensors):
        d = x - base
        if sparsify is not None and density is not None and density[i] < 1:
            if sparsify == "magnitude":
                mask = blocks.magnitude_mask(d, density[i])
            elif sparsify == "outliers":
                mask = blocks.outlier_mask(d, density[i], (gamma or [0.01] * len(tensors))[i])
            elif sparsify == "magprune":
                eps = (epsilon or [0.15] * len(tensors))[i]
                mask = _magprune_mask(d, density[i], eps, _random_seed(ctx, i), who)
            else:
                mask = blocks.random_mask(d.shape, density[i], _random_seed(ctx, i)).to(d.device)
            d = blocks.rescale_masked(d, mask, "l1" if rescale else None)
        deltas.append(d)
    stacked = torch.stack(deltas)
    w = as_weights(weight, base)
    weighted = stacked * w
    mask = blocks.sign_consensus(weighted, consensus) if consensus else None
    mixed = blocks.disjoint_mean(weighted, w, mask, normalize)
    return base + lambda_ * mixed


@merge_method("task_arithmetic", paper="https://arxiv.org/abs/2212.04089",
              pretty_name="Task Arithmetic", elementwise=True)
def task_arithmetic(tensors: list[Tensor], base_tensor: Tensor, weight: list[float] = 1.0,  # type: ignore[assignment]
                    normalize: bool = False, lambda_: float = 1.0, int8_mask: bool = False) -> Tensor:
    """``base + lambda * sum_i w_i (x_i - base)`` (Ilharco et al. 2023)."""
    return task_vector_merge(tensors, base_tensor, weight, normalize=normalize, lambda_=lambda_)


@merge_method("ties", paper="https://arxiv.org/abs/2306.01708", pretty_name="TIES")
def ties(tensors: list[Tensor], base_tensor: Tensor, weight: list[float] = 1.0,  # type: ignore[assignment]
         density: list[float] = 1.0, normalize: bool = True, rescale: bool = False,  # type: ignore[assignment]
         lambda_: float = 1.0, int8_mask: bool = False) -> Tensor:
    """Trim each task vector to its top-``density`` magnitudes, elect signs, disjoint mean."""
    return task_vector_merge(tensors, base_tensor, weight, density=density, sparsify="magnitude",
                             consensus="sum", normalize=normalize, rescale=rescale, lambda_=lambda_)


@merge_method("dare_linear", paper="https://arxiv.org/abs/2311.03099", pretty_name="DARE (linear)")
def dare_linear(tensors: list[Tensor], base_tensor: Tensor, ctx: TensorContext,
                weight: list[float] = 1.0, density: list[float] = 1.0,  # type: ignore[assignment]
                normalize: bool = False, rescale: bool = True, lambda_: float = 1.0,
                int8_mask: bool = False) -> Tensor:
    """Drop each task-vector entry with probability ``1 - density``, rescale, weighted sum."""
    return task_vector_merge(tensors, base_tensor, weight, density=density, sparsify="random",
                             normalize=normalize, rescale=rescale, lambda_=lambda_, ctx=ctx)


@merge_method("dare_ties", paper="https://arxiv.org/abs/2311.03099", pretty_name="DARE (TIES)")
def dare_ties(tensors: list[Tensor], base_tensor: Tensor, ctx: TensorContext,
              weight: list[float] = 1.0, density: list[float] = 1.0,  # type: ignore[assignment]
              normalize: bool = False, rescale: bool = True, lambda_: float = 1.0,
              int8_mask: bool = False) -> Tensor:
    """DARE's random drop and rescale, then TIES' sign election and disjoint sum."""
    return task_vector_merge(tensors, base_tensor, weight, density=density, sparsify="random",
                             consensus="sum", normalize=normalize, rescale=rescale,
                             lambda_=lambda_, ctx=ctx)


@merge_method("breadcrumbs", paper="https://arxiv.org/abs/2312.06795",
              pretty_name="Model Breadcrumbs")
def breadcrumbs(tensors: list[Tensor], base_tensor: Tensor, weight: list[float] = 1.0,  # type: ignore[assignment]
                density: list[float] = 1.0, gamma: list[float] = 0.01,  # type: ignore[assignment]
                normalize: bool = False, rescale: bool = False, lambda_: float = 1.0,
                int8_mask: bool = False) -> Tensor:
    """Drop the largest (``gamma``) and smallest task-vector entries, keep ``density``, sum."""
    return task_vector_merge(tensors, base_tensor, weight, density=density, sparsify="outliers",
                             gamma=gamma, normalize=normalize, rescale=rescale, lambda_=lambda_)


@merge_method("breadcrumbs_ties", paper="https://arxiv.org/abs/2312.06795",
              pretty_name="Model Breadcrumbs with TIES")
def breadcrumbs_ties(tensors: list[Tensor], base_tensor: Tensor, weight: list[float] = 1.0,  # type: ignore[assignment]
                     density: list[float] = 1.0, gamma: list[float] = 0.01,  # type: ignore[assignment]
                     normalize: bool = False, rescale: bool = False, lambda_: float = 1.0,
                     int8_mask: bool = False) -> Tensor:
    """Breadcrumbs' outlier sparsification with TIES' sign election."""
    return task_vector_merge(tensors, base_tensor, weight, density=density, sparsify="outliers",
                             gamma=gamma, consensus="sum", normalize=normalize, rescale=rescale,
                             lambda_=lambda_)


@merge_method("della", paper="https://arxiv.org/abs/2406.11617", pretty_name="DELLA")
def della(tensors: list[Tensor], base_tensor: Tensor, ctx: TensorContext,
          weight: list[float] = 1.0, density: list[float] = 1.0,  # type: ignore[assignment]
          epsilon: list[float] = 0.15, normalize: bool = True, rescale: bool = True,  # type: ignore[assignment]
          lambda_: float = 1.0, int8_mask: bool = False) -> Tensor:
    """MagPrune (keep each entry with a probability that grows with its magnitude's rank, from
    ``density - epsilon`` to ``density + epsilon``), rescale, elect signs, disjoint mean."""
    return task_vector_merge(tensors, base_tensor, weight, density=density, sparsify="magprune",
                             epsilon=epsilon, consensus="sum", normalize=normalize,
                             rescale=rescale, lambda_=lambda_, ctx=ctx, who="della")


@merge_method("della_linear", paper="https://arxiv.org/abs/2406.11617",
              pretty_name="DELLA (linear)")
def della_linear(tensors: list[Tensor], base_tensor: Tensor, ctx: TensorContext,
                 weight: list[float] = 1.0, density: list[float] = 1.0,  # type: ignore[assignment]
                 epsilon: list[float] = 0.15, normalize: bool = False,  # type: ignore[assignment]
                 rescale: bool = True, lambda_: float = 1.0, int8_mask: bool = False) -> Tensor:
    """DELLA's MagPrune and rescale, then a weighted sum of the task vectors (no sign election)."""
    return task_vector_merge(tensors, base_tensor, weight, density=density, sparsify="magprune",
                             epsilon=epsilon, normalize=normalize, rescale=rescale,
                             lambda_=lambda_, ctx=ctx, who="della_linear")
