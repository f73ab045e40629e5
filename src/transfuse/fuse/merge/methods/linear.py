"""Linear merge / model soup: a weighted average of the models (Wortsman et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge.method import as_weights, merge_method


def weighted_average(tensors: list[Tensor], weight: list[float], normalize: bool = True) -> Tensor:
    """``sum_i w_i x_i``, divided by ``sum_i w_i`` when ``normalize``."""
    stacked = torch.stack(tensors)
    w = as_weights(weight, tensors[0])
    out = (stacked * w).sum(0)
    if normalize:
        total = float(sum(weight))
        if abs(total) < 1e-12:
            raise UserError("linear merge: the weights sum to 0 and normalize is true; "
                            "change a weight or set normalize: false")
        out = out / total
    return out


@merge_method("linear", paper="https://arxiv.org/abs/2203.05482", pretty_name="Linear (model soup)",
              elementwise=True)
def linear(tensors: list[Tensor], weight: list[float] = 1.0, normalize: bool = True) -> Tensor:  # type: ignore[assignment]
    """Weighted average; with the default weights of 1 it is the uniform soup."""
    return weighted_average(tensors, weight, normalize)
