"""Model Stock (Jang et al. 2024): move from the average of fine-tunes towards the base by their angle."""

from __future__ import annotations

import torch
from torch import Tensor

from transfuse.fuse.merge.method import merge_method


@merge_method("model_stock", paper="https://arxiv.org/abs/2403.19522", pretty_name="Model Stock",
              min_models=2)
def model_stock(tensors: list[Tensor], base_tensor: Tensor, filter_wise: bool = False) -> Tensor:
    """``t * mean(x_i) + (1 - t) * base`` with ``t = N cos / (1 + (N - 1) cos)``.

    ``cos`` is the mean pairwise cosine between the offsets ``x_i - base`` (per tensor, or per row
    when ``filter_wise``), as mergekit computes it; N is the number of fine-tuned models.
    """
    shape = base_tensor.shape
    if filter_wise:
        w0 = base_tensor.unsqueeze(0) if base_tensor.dim() == 1 else base_tensor
        ws = [w.unsqueeze(0) if w.dim() == 1 else w for w in tensors]
    else:
        w0, ws = base_tensor.reshape(-1), [w.reshape(-1) for w in tensors]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            a, b = offsets[i], offsets[j]
            norms = (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(0).unsqueeze(-1)
    n = len(ws)
    t = n * cos / (1 + (n - 1) * cos)
    w_avg = sum(ws) / n
    return (t * w_avg + (1 - t) * w0).reshape(shape)
