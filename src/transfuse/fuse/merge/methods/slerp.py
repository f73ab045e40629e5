"""SLERP: spherical interpolation between the base model and one other (mergekit's semantics)."""

from __future__ import annotations

import math

from torch import Tensor

from transfuse.fuse.merge.method import merge_method

DOT_THRESHOLD = 0.9995


def slerp_tensors(t: float, v0: Tensor, v1: Tensor, eps: float = 1e-8) -> Tensor:
    """Interpolate along the great circle from ``v0`` (t=0) to ``v1`` (t=1), tensors as flat vectors.

    The angle comes from the normalised vectors (a norm at most ``eps`` is left as is); the result
    mixes the original, unnormalised tensors. Nearly colinear inputs (|cos| > 0.9995) fall back to
    ``lerp``, where slerp is numerically unstable and equal to lerp to first order.
    """
    n0, n1 = v0.norm(), v1.norm()
    u0 = v0 / n0 if n0 > eps else v0
    u1 = v1 / n1 if n1 > eps else v1
    dot = float((u0 * u1).sum())
    if abs(dot) > DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    theta = math.acos(dot)
    s0 = math.sin(theta - theta * t) / math.sin(theta)
    s1 = math.sin(theta * t) / math.sin(theta)
    return s0 * v0 + s1 * v1


@merge_method("slerp", paper="https://dl.acm.org/doi/10.1145/325165.325242",
              pretty_name="SLERP", min_models=1, max_models=1)
def slerp(tensors: list[Tensor], base_tensor: Tensor, t: float) -> Tensor:
    """Spherical interpolation from the base model (``t = 0``) to the other model (``t = 1``)."""
    return slerp_tensors(t, base_tensor, tensors[0])
