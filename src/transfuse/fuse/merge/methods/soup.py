"""Greedy soup's combine step (Wortsman et al. 2022); the selection lives in ``tune.greedy_soup``."""

from __future__ import annotations

from torch import Tensor

from transfuse.fuse.merge.method import merge_method
from transfuse.fuse.merge.methods.linear import weighted_average


@merge_method("greedy_soup", paper="https://arxiv.org/abs/2203.05482", pretty_name="Greedy soup",
              needs_evaluate=True, elementwise=True, notes=(
                  "models are added in order of validation score and kept only when the soup's "
                  "validation score does not drop; the output is the uniform average of those kept",))
def greedy_soup(tensors: list[Tensor], weight: list[float] = 1.0) -> Tensor:  # type: ignore[assignment]
    """Uniform average of the selected ingredients (weight 1 kept, 0 dropped)."""
    return weighted_average(tensors, weight, normalize=True)
