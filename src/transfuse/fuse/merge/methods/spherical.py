"""Spherical merges beyond SLERP: NuSLERP, Multi-SLERP and the Karcher mean (mergekit's semantics).

Each is transcribed from mergekit 0.1.5 (``merge_methods/nuslerp.py``, ``multislerp.py``,
``karcher.py``) and checked tensor for tensor against it (``tests/test_merge_mergekit_golden.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge.method import merge_method


def nuslerp_tensors(t: float, v0: Tensor, v1: Tensor, dim: int = -1, eps: float = 1e-8,
                    flatten: bool = False) -> Tensor:
    """SLERP from ``v0`` (t=0) to ``v1`` (t=1) along ``dim`` (row vectors), or of the flattened
    tensors; rows whose angle is below ``eps`` (1 - cos^2 <= eps^2) use lerp."""
    out_shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if dim != -1 and not flatten:
        out = out.transpose(dim, -1)
    return out.reshape(out_shape)


@merge_method("nuslerp", paper="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
              pretty_name="NuSLERP", min_models=2, max_models=2)
def nuslerp(tensors: list[Tensor], base_tensor: Tensor | None, weight: list[float] = 1.0,  # type: ignore[assignment]
            nuslerp_row_wise: bool = False, nuslerp_flatten: bool = True) -> Tensor:
    """SLERP between two models at ``t = w_2 / (w_1 + w_2)`` (0.5 when the weights sum to 0), of
    their task vectors when there is a base model; per row (``nuslerp_flatten: false``) or per
    column (``nuslerp_row_wise: true``) instead of the flattened tensor."""
    total = sum(weight)
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    dim = 0 if nuslerp_row_wise else -1
    if base_tensor is not None:
        return base_tensor + nuslerp_tensors(t, tensors[0] - base_tensor, tensors[1] - base_tensor,
                                             dim=dim, flatten=nuslerp_flatten)
    return nuslerp_tensors(t, tensors[0], tensors[1], dim=dim, flatten=nuslerp_flatten)


@merge_method("multislerp", paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
              pretty_name="Multi-SLERP")
def multislerp(tensors: list[Tensor], base_tensor: Tensor | None, weight: list[float] = 1.0,  # type: ignore[assignment]
               normalize_weights: bool = True, eps: float = 1e-8) -> Tensor:
    """Barycentric interpolation on the hypersphere: project the unit tensors (task vectors with a
    base model) onto the tangent space at their weighted mean direction, average there, map back
    with the exponential map and scale by the weighted mean norm."""
    if len(tensors) == 1:
        return tensors[0]
    stacked = torch.stack(tensors, dim=0)
    if base_tensor is not None:
        stacked -= base_tensor
    flat = stacked.view(stacked.shape[0], -1)
    w = torch.tensor([float(v) for v in weight], dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] == 2 or bool((norms < eps).all()):  # antipodal pair, or no model
            # moved this tensor (mergekit raises for the latter with 3+ models): lerp
            res = (stacked * w.view(-1, *([1] * (stacked.dim() - 1)))).sum(0)
            return res + base_tensor if base_tensor is not None else res
        raise UserError("multislerp: the weighted mean direction of the models is zero (opposite "
                        "models with balancing weights); change a weight")
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdim=True)
    tangent = ((units - dots * mean) * w.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    out = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    out = (out * (norms.squeeze(-1) * w).sum()).view(stacked.shape[1:])
    return out + base_tensor if base_tensor is not None else out


def karcher_mean(tensors: list[Tensor], alphas: list[float], max_iter: int = 10,
                 tol: float = 1e-5) -> Tensor:
    """Weighted Karcher (Riemannian) mean of the directions, scaled by the weighted mean norm.

    Fixed-point iterations on the unit sphere from the normalised weighted mean; stops after
    ``max_iter`` steps or when the tangent step is below ``tol``. Inputs with norm <= ``tol`` do
    not vote on the direction (but count in the norm).
    """
    if len(tensors) == 1:
        return tensors[0]
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    norms = [torch.linalg.vector_norm(x.to(dtype)) for x in tensors]
    units = [torch.zeros_like(x) if n.item() == 0.0 else (x / n).to(x.dtype)
             for x, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    total = sum(alphas[i] for i in valid)
    a = [alphas[i] / total for i in valid]
    us = [units[i] for i in valid]
    mean = torch.zeros_like(us[0])
    for ai, u in zip(a, us):
        mean += ai * u
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = us[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for ai, u in zip(a, us):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += ai * (theta / torch.sin(theta)) * (u - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent.to(dtype))
        if tangent_norm.item() < tol:
            break
        mean = (torch.cos(tangent_norm) * mean
                + torch.sin(tangent_norm) * (tangent / tangent_norm)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    scale = sum(ai * n for ai, n in zip(alphas, norms))
    return scale * mean


@merge_method("karcher", paper="https://arxiv.org/abs/2603.04972", pretty_name="Karcher mean")
def karcher(tensors: list[Tensor], base_tensor: Tensor | None, max_iter: int = 10,
            tol: float = 1e-5) -> Tensor:
    """Uniform Karcher mean of every input, the base model included when there is one (as in
    mergekit, whose ``karcher`` treats ``base_model`` as one more input, after the others)."""
    xs = list(tensors) + ([base_tensor] if base_tensor is not None else [])
    if max_iter < 0 or tol < 0:
        raise UserError(f"karcher: max_iter ({max_iter}) and tol ({tol}) must be >= 0")
    return karcher_mean(xs, [1.0 / len(xs)] * len(xs), max_iter=max_iter, tol=tol)
