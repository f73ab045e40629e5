"""RegMean (Jin et al. 2023): closed-form merge of linear layers from their input Gram matrices."""

from __future__ import annotations

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge.method import merge_method
from transfuse.fuse.merge.methods.linear import weighted_average


def scale_off_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """``alpha * G + (1 - alpha) * diag(G)``: the paper's shrinkage of the off-diagonal terms."""
    return alpha * gram + (1 - alpha) * torch.diag_embed(torch.diagonal(gram))


@merge_method("regmean", paper="https://arxiv.org/abs/2212.09849", pretty_name="RegMean")
def regmean(tensors: list[Tensor], gram: list[Tensor] | None, alpha: float = 0.9) -> Tensor:
    """``W = (sum_i W_i G_i) (sum_i G_i)^-1`` for a linear weight ``W`` (out x in), ``G_i = X_i^T X_i``.

    A 1x1 convolution weight ``(out, in, 1, 1)`` is a linear map over channels and is merged the
    same way when a Gram matrix is given for it (``regmean_grams`` records those of ungrouped,
    stride-1, unpadded 1x1 convolutions).

    Each model entry names its Gram file (``models[].gram``: safetensors keyed by the linear
    weight's name or its module's name, in x in). Tensors without Gram matrices (biases, norms,
    embeddings) get the plain average, as in the paper. ``alpha`` in [0, 1] scales off-diagonals.
    """
    shape = tensors[0].shape
    pointwise = tensors[0].dim() == 4 and tuple(shape[2:]) == (1, 1)
    if gram is None or not (tensors[0].dim() == 2 or pointwise):
        return weighted_average(tensors, [1.0] * len(tensors), normalize=True)
    if pointwise:
        flat = regmean([t.reshape(shape[0], shape[1]) for t in tensors], gram, alpha)
        return flat.reshape(shape)
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"regmean: parameter 'alpha' must be in [0, 1], got {alpha!r}")
    grams = [scale_off_diagonal(g.to(torch.float64), alpha) for g in gram]
    n_in = tensors[0].shape[1]
    if any(g.shape != (n_in, n_in) for g in grams):
        raise UserError(f"regmean: a Gram matrix has shape {tuple(grams[0].shape)}, the linear "
                        f"weight needs ({n_in}, {n_in}); recompute the Gram files")
    total = sum(grams)
    rhs = sum(g @ w.to(torch.float64).T for g, w in zip(grams, tensors))
    try:
        merged_t = torch.linalg.solve(total, rhs)
    except torch.linalg.LinAlgError:  # singular sum of Grams (e.g. alpha 1, few samples)
        merged_t = torch.linalg.pinv(total, hermitian=True) @ rhs
    return merged_t.T.to(tensors[0].dtype)
