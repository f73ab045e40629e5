"""SVD-family merges of task vectors: TSV-M, Iso-C, Iso-CTS (FusionBench's semantics, per tensor).

Every matrix is merged through SVDs of that one matrix's task vectors ``d_i = x_i - base``, so
memory is a few copies of one layer, never of the model; other tensors (biases, norms, spatial
convolutions) get the mean task vector, as in FusionBench. A matrix is a 2-D tensor (identical to
FusionBench) or a pointwise (1x1) convolution's ``(out, in, 1, 1)`` weight, a linear map over
channels merged as that ``(out, in)`` matrix: a deliberate departure, since FusionBench's code
gives every 4-D tensor the mean (``as_matrix``). The result is ``base + alpha * merged``.
Checked against a transcription of FusionBench's code (``tests/test_merge_fusionbench_golden.py``).

- TSV-M (Gargiulo et al., CVPR 2025): keep each task's top ``int(r / T)`` singular triplets
  (``r = min(shape)``, ``T`` models), concatenate them, replace the concatenated U and V by their
  nearest orthogonal matrices (polar factor, ``U' = P Q^T`` from ``svd(U) = P S Q^T``) and rebuild
  ``U' diag(s) V'``.
- Iso-C (Marczak et al., ICML 2025): the SVD of the summed task vectors with every singular value
  replaced by their mean (an isotropic spectrum).
- Iso-CTS: the top ``common_space_fraction`` of the summed task vectors' singular directions, plus
  each task's top directions outside that common subspace, orthogonalised, with an isotropic
  spectrum (the mean of all the kept singular values).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge.method import merge_method


def orthogonalize(x: Tensor) -> Tensor:
    """The nearest matrix with orthonormal columns (or rows, if wider): ``P Q^T`` of ``svd(x)``."""
    p, _, qt = torch.linalg.svd(x, full_matrices=False)
    return p @ qt


def as_matrix(t: Tensor) -> Tensor | None:
    """The matrix a weight is, or None: a 2-D tensor, or a 1x1 convolution's ``(out, in, 1, 1)``
    weight viewed as ``(out, in)`` when ``out`` and ``in`` both exceed 1 (a depthwise ``(C, 1, 1,
    1)`` weight scales channels, it is no matrix). A grouped convolution cannot be told from its
    weight: its ``(out, in / groups, 1, 1)`` weight is merged as one matrix."""
    if t.dim() == 2:
        return t
    if t.dim() == 4 and tuple(t.shape[2:]) == (1, 1) and min(t.shape[:2]) > 1:
        return t.reshape(t.shape[0], t.shape[1])
    return None


def per_matrix(merge_matrix: Callable[[list[Tensor]], Tensor], deltas: list[Tensor],
               base: Tensor) -> Tensor | None:
    """``merge_matrix`` of the task vectors as matrices, in ``base``'s shape; None if not a matrix."""
    if as_matrix(base) is None:
        return None
    return merge_matrix([as_matrix(d) for d in deltas]).reshape(base.shape)  # type: ignore[misc]


def task_vectors(tensors: list[Tensor], base: Tensor, weight: list[float] | None = None
                 ) -> list[Tensor]:
    if weight is None:
        return [x - base for x in tensors]
    return [(x - base) * w for x, w in zip(tensors, weight)]


def mean_of(deltas: list[Tensor]) -> Tensor:
    """FusionBench's running mean ``m += (d_i - m) / (i + 1)`` (same arithmetic, same rounding)."""
    out = deltas[0].clone()
    for i, d in enumerate(deltas[1:], start=2):
        out += (d - out) / i
    return out


def tsv_task_vector(deltas: list[Tensor]) -> Tensor:
    """TSV-M's merged task vector of one matrix (see the module docstring)."""
    n = len(deltas)
    k = int(min(deltas[0].shape) * (1 / n))  # FusionBench's sv_reduction arithmetic
    if k == 0:  # more tasks than the rank: FusionBench would keep nothing (a zero update)
        return mean_of(deltas)
    us, ss, vs = [], [], []
    for d in deltas:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k, :])
        del u, s, vh
    u_cat, s_cat, v_cat = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vs, dim=0)
    del us, vs
    return torch.linalg.multi_dot((orthogonalize(u_cat), torch.diag(s_cat), orthogonalize(v_cat)))


@merge_method("tsv_merge", paper="https://arxiv.org/abs/2412.00081", pretty_name="TSV-M",
              idempotent=False,
              notes=(("matrices (2-D and 1x1-convolution weights) merged through per-task "
                     "truncated SVDs, orthogonalised; other tensors get the mean task vector"),))
def tsv_merge(tensors: list[Tensor], base_tensor: Tensor, weight: list[float] = 1.0,  # type: ignore[assignment]
              alpha: float = 1.0) -> Tensor:
    """Task Singular Vectors merge: ``base + alpha * TSV(w_i d_i)``; ``weight`` scales each task
    vector before the SVDs (FusionBench's list-valued ``alpha``)."""
    deltas = task_vectors(tensors, base_tensor, weight)
    merged = per_matrix(tsv_task_vector, deltas, base_tensor)
    return base_tensor + alpha * (mean_of(deltas) if merged is None else merged)


def iso_c_task_vector(deltas: list[Tensor]) -> Tensor:
    """Iso-C's merged task vector of one matrix: the summed task vectors with a flat spectrum."""
    total = sum(deltas[1:], deltas[0].clone())
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    return (u * s.mean()) @ vh


@merge_method("iso_c", paper="https://arxiv.org/abs/2502.04959", pretty_name="Iso-C",
              idempotent=False,
              notes=(("matrices (2-D and 1x1-convolution weights): SVD of the summed task "
                     "vectors with the singular values replaced by their mean; other tensors get "
                     "the mean task vector"),))
def iso_c(tensors: list[Tensor], base_tensor: Tensor, alpha: float = 1.0) -> Tensor:
    """Isotropic merging in the common subspace: ``base + alpha * Iso-C(d_1..d_T)``."""
    deltas = task_vectors(tensors, base_tensor)
    merged = per_matrix(iso_c_task_vector, deltas, base_tensor)
    if merged is None:  # FusionBench's iso_c: sum / T here (TSV-M and Iso-CTS use a running mean)
        merged = sum(deltas[1:], deltas[0].clone()) / len(deltas)
    return base_tensor + alpha * merged


def iso_cts_sizes(r: int, n_tasks: int, fraction: float) -> tuple[int, int]:
    """(common subspace size, directions per task), FusionBench's rounding: the task-specific
    part is a multiple of the task count (Python's ``round``), the common part takes the rest."""
    common = int(r * fraction)
    specific = round((r - common) / n_tasks) * n_tasks
    if specific > r:  # FusionBench would get a negative common size here; keep whole blocks
        specific -= n_tasks
    return r - specific, specific // n_tasks


def iso_cts_task_vector(deltas: list[Tensor], common_space_fraction: float) -> Tensor:
    """Iso-CTS's merged task vector of one matrix (see the module docstring)."""
    n = len(deltas)
    r = min(deltas[0].shape)
    common, per_task = iso_cts_sizes(r, n, common_space_fraction)
    total = sum(deltas[1:], deltas[0].clone())
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    cu, cs, cv = u[:, :common], s[:common], vh[:common, :]
    del u, s, vh, total
    us, ss, vs = [], [], []
    for d in deltas:
        d_ts = d - cu @ (cu.T @ d)  # remove the common subspace
        u, s, vh = torch.linalg.svd(d_ts, full_matrices=False)
        us.append(u[:, :per_task])
        ss.append(s[:per_task])
        vs.append(vh[:per_task, :])
        del d_ts, u, s, vh
    u_all = torch.cat([*us, cu], dim=1)
    s_all = torch.cat([*ss, cs])
    v_all = torch.cat([*vs, cv], dim=0)
    del us, vs
    return (orthogonalize(u_all) * s_all.mean()) @ orthogonalize(v_all)


@merge_method("iso_cts", paper="https://arxiv.org/abs/2502.04959", pretty_name="Iso-CTS",
              idempotent=False,
              notes=(("matrices (2-D and 1x1-convolution weights): common and task-specific "
                     "singular directions, orthogonalised, with a flat spectrum; other tensors get "
                     "the mean task vector"),))
def iso_cts(tensors: list[Tensor], base_tensor: Tensor, alpha: float = 1.0,
            common_space_fraction: float = 0.8) -> Tensor:
    """Isotropic merging in common and task-specific subspaces: ``base + alpha * Iso-CTS(d_i)``."""
    if not 0.0 <= common_space_fraction <= 1.0:
        raise UserError(f"iso_cts: parameter 'common_space_fraction' is {common_space_fraction!r}; "
                        "give a fraction in [0, 1] (the papers use 0.8)")
    deltas = task_vectors(tensors, base_tensor)
    merged = per_matrix(lambda ds: iso_cts_task_vector(ds, common_space_fraction), deltas,
                        base_tensor)
    return base_tensor + alpha * (mean_of(deltas) if merged is None else merged)
