"""WUDI merging (Cheng et al., ICML 2025): data-free interference minimisation per linear layer.

For a matrix with task vectors ``d_i`` WUDI looks for the merged task vector ``t`` minimising
``sum_i ||(t - d_i) d_i^T||_F^2 / ||d_i||_F^2``: a task vector spans (approximately) the inputs of
its own task, so the interference of ``t`` with task ``i`` is measured on ``d_i``'s rows. As in
FusionBench (and the authors' code) ``t`` starts at ``sum_i d_i`` and takes ``iter_num`` Adam steps
of learning rate ``lr``; other tensors get the mean task vector (matrices as in ``svd.py``'s
``as_matrix``: 2-D weights and 1x1 convolutions). The gradient is computed in closed
form, ``2 sum_i (t - d_i) d_i^T d_i / ||d_i||^2``, choosing per layer the cheaper of two equal
forms (see ``_gradient``), and the step is ``torch.optim.Adam``'s arithmetic, so no autograd graph
is kept: memory is a few copies of one layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge.method import merge_method
from transfuse.fuse.merge.methods.svd import as_matrix, mean_of, task_vectors


def _gradient(deltas: Tensor, scale: Tensor) -> tuple[Tensor, Tensor | None]:
    """What the gradient needs, precomputed: ``(d, None)`` for the per-task form, or ``(M, C)``
    with ``M = sum_i s_i d_i^T d_i``, ``C = sum_i s_i d_i d_i^T d_i`` for ``grad = 2 (t M - C)``.

    Per step the per-task form costs ``2 T out^2 in`` multiply-adds and the Gram form ``out in^2``
    (``T`` tasks, an ``out x in`` layer): the Gram form is used when it is cheaper (``in < 2 T
    out``) and ``M`` (``in x in``) is at most 4 times the layer's size (``in <= 4 out``).
    """
    n_tasks, out_f, in_f = deltas.shape
    if in_f >= 2 * n_tasks * out_f or in_f > 4 * out_f:
        return deltas, None
    weighted = deltas * scale.view(-1, 1, 1)
    gram = torch.einsum("toi,toj->ij", weighted, deltas)
    cross = sum(d @ (d.T @ w) for d, w in zip(deltas, weighted))  # d (d^T w): never out x out
    return gram, cross  # type: ignore[return-value]


def adam_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int,
              lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """One step of ``torch.optim.Adam`` (its single-tensor arithmetic, no weight decay), in place.

    Written out because ``torch.optim``'s first step imports ``torch._dynamo`` (about 2.5 s).
    """
    beta1, beta2 = betas
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


def wudi_task_vector(deltas: list[Tensor], iter_num: int = 300, lr: float = 1e-5) -> Tensor:
    """WUDI's merged task vector of one matrix (see the module docstring)."""
    stacked = torch.stack(deltas)
    del deltas  # the caller passes a temporary list: keep one copy of the task vectors
    sq_norms = torch.square(torch.norm(stacked.reshape(stacked.shape[0], -1), p=2, dim=-1))
    keep = sq_norms > 0  # a zero task vector has no interference term (FusionBench: 0 / 0)
    merged = torch.sum(stacked, dim=0)
    if not bool(keep.any()) or iter_num == 0:
        return merged
    if not bool(keep.all()):
        stacked, sq_norms = stacked[keep], sq_norms[keep]
    scale = 1.0 / sq_norms
    first, second = _gradient(stacked, scale)
    exp_avg, exp_avg_sq = torch.zeros_like(merged), torch.zeros_like(merged)
    for step in range(1, iter_num + 1):
        if second is None:  # per task: 2 sum_i s_i ((t - d_i) d_i^T) d_i
            grad = torch.zeros_like(merged)
            for d, s in zip(first, scale):
                grad += (2 * s) * (((merged - d) @ d.T) @ d)
        else:
            grad = torch.addmm(second, merged, first, beta=-2, alpha=2)  # 2 (t M - C), one pass
        adam_step(merged, grad, exp_avg, exp_avg_sq, step, lr)
    return merged


@merge_method("wudi", paper="https://arxiv.org/abs/2503.08099", pretty_name="WUDI merging",
              idempotent=False,
              notes=(("matrices (2-D and 1x1-convolution weights): Adam on the task-vector "
                     "interference loss, from the sum of the task vectors; other tensors get the "
                     "mean task vector"),))
def wudi(tensors: list[Tensor], base_tensor: Tensor, iter_num: int = 300, lr: float = 1e-5,
         alpha: float = 1.0) -> Tensor:
    """``base + alpha * WUDI(d_1..d_T)`` (the paper uses no coefficient: ``alpha`` 1)."""
    if iter_num < 0 or lr <= 0:
        raise UserError(f"wudi: parameters iter_num ({iter_num}) and lr ({lr}) must be >= 0 and "
                        "> 0; FusionBench uses iter_num 300-400, lr 1e-5")
    if as_matrix(base_tensor) is None:
        return base_tensor + alpha * mean_of(task_vectors(tensors, base_tensor))
    # the task vectors as a temporary list, so that wudi_task_vector holds the only copy (stacked)
    merged = wudi_task_vector([as_matrix(d) for d in task_vectors(tensors, base_tensor)],  # type: ignore[misc]
                              iter_num, lr)
    return base_tensor + alpha * merged.reshape(base_tensor.shape)
