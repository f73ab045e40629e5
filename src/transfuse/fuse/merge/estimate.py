"""Data the data-driven merges need, estimated from a torch model: diagonal Fisher and Gram matrices;
and a merged network's BatchNorm statistics, re-estimated (``recompute_batchnorm``).

``diagonal_fisher`` (Fisher merging, Matena and Raffel 2022) and ``regmean_grams`` (RegMean, Jin
et al. 2023) take a model that maps a batch input to logits and an iterable of ``(input, labels)``
batches; ``save_tensors`` writes the result as safetensors, the file ``models[].fisher`` /
``models[].gram`` name. Keys are the model's own parameter names, so estimate on the module whose
state dict is being merged (e.g. the whole ``Classifier`` when its state dict was saved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transfuse.errors import UserError

Batch = tuple[Any, Tensor]
FisherMode = Literal["empirical", "expected"]


def batch_size_of(x: Any) -> int:
    """Number of examples in a batch input (a tensor, or a dict of tensors with a batch axis)."""
    if isinstance(x, Tensor):
        return int(x.shape[0])
    if isinstance(x, dict):
        return next(int(v.shape[0]) for v in x.values() if isinstance(v, Tensor))
    raise TypeError(f"unsupported batch input type {type(x).__name__}")


def slice_batch(x: Any, i: int) -> Any:
    """Example ``i`` of a batch input, keeping the batch axis; with an ``attention_mask`` the
    positions after the last unmasked one are trimmed from every tensor of that length."""
    if isinstance(x, Tensor):
        return x[i:i + 1]
    out = {k: v[i:i + 1] if isinstance(v, Tensor) else v for k, v in x.items()}
    mask = out.get("attention_mask")
    if isinstance(mask, Tensor) and mask.dim() == 2:
        n = int(mask[0].nonzero().max()) + 1 if mask.any() else 1
        out = {k: v[:, :n] if isinstance(v, Tensor) and v.dim() >= 2 and v.shape[1] == mask.shape[1]
               else v for k, v in out.items()}
    return out


def _examples(batches: Iterable[Batch], max_samples: int | None) -> Iterator[tuple[Any, int]]:
    seen = 0
    for x, y in batches:
        for i in range(batch_size_of(x)):
            if max_samples is not None and seen >= max_samples:
                return
            yield slice_batch(x, i), int(y[i])
            seen += 1


def diagonal_fisher(model: nn.Module, batches: Iterable[Batch], *, mode: FisherMode = "empirical",
                    max_samples: int | None = None,
                    params: Callable[[str], bool] | None = None) -> dict[str, Tensor]:
    """Diagonal Fisher ``F = mean_n E_y[(d log p(y | x_n) / d theta)^2]`` of every trainable parameter.

    ``mode="empirical"`` takes ``y`` = the true label (one backward per example);
    ``"expected"`` sums exactly over the classes weighted by the model's probabilities (one backward
    per example and class), the estimator of Matena and Raffel. Per-example gradients: each example
    is its own forward/backward in eval mode (no dropout, BatchNorm on its running statistics).
    ``params`` filters parameter names. Returns float32 tensors on the CPU, keyed by name.
    """
    if mode not in ("empirical", "expected"):
        raise UserError(f"diagonal_fisher: mode must be 'empirical' or 'expected', got {mode!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (params is None or params(n))]
    if not named:
        raise UserError("diagonal_fisher: the model has no trainable parameters to estimate")
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for x, y in _examples(batches, max_samples):
            log_p = F.log_softmax(model(x).float(), dim=-1)[0]
            if mode == "empirical":
                targets, weights = [y], [1.0]
            else:
                probs = log_p.detach().exp()
                targets, weights = list(range(log_p.numel())), probs.tolist()
            for j, (c, w) in enumerate(zip(targets, weights)):
                grads = torch.autograd.grad(log_p[c], [p for _, p in named], allow_unused=True,
                                            retain_graph=j < len(targets) - 1)
                for (n, _), g in zip(named, grads):
                    if g is not None:
                        total[n] += w * g.detach().float() ** 2
            count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError("diagonal_fisher: no examples; give a non-empty data set")
    return {n: (t / count).cpu() for n, t in total.items()}


def regmean_grams(model: nn.Module, batches: Iterable[Batch], *, max_samples: int | None = None,
                  modules: Callable[[str], bool] | None = None) -> dict[str, Tensor]:
    """Gram matrices ``G = X^T X / rows`` of the inputs of every ``nn.Linear`` (RegMean's statistics)
    and of every pointwise convolution (1x1, stride 1, no padding, ungrouped: a linear map over
    channels, one row per spatial position).

    ``X`` stacks the layer's input rows over the data (all leading axes flattened). For batches
    whose input is a dict with an ``attention_mask`` (text), rows at padded positions are left out.
    Averaging over rows (rather than summing) keeps models estimated on different amounts of data
    on one scale. Keys are ``"<module>.weight"``; values float32 ``(in, in)`` on the CPU.
    """
    linears = {n: m for n, m in model.named_modules()
               if (isinstance(m, nn.Linear) or _pointwise(m)) and (modules is None or modules(n))}
    if not linears:
        raise UserError("regmean_grams: the model has no nn.Linear or 1x1 convolution layers to estimate")
    sums = {n: torch.zeros(_fan_in(m), _fan_in(m), dtype=torch.float64) for n, m in linears.items()}
    rows = dict.fromkeys(linears, 0)
    state: dict[str, Tensor | None] = {"mask": None}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].detach()
            if isinstance(module, nn.Conv2d):
                x = x.movedim(1, -1)  # (N, C, H, W) -> rows of C channels
            mask = state["mask"]
            if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
                x = x[mask.bool()]
            x = x.reshape(-1, x.shape[-1]).to(torch.float64).cpu()
            sums[name] += x.T @ x
            rows[name] += x.shape[0]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for x, _ in batches:
                n = batch_size_of(x)
                if max_samples is not None:
                    if seen >= max_samples:
                        break
                    if seen + n > max_samples:
                        x, n = _head(x, max_samples - seen), max_samples - seen
                state["mask"] = x.get("attention_mask") if isinstance(x, dict) else None
                model(x)
                seen += n
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise UserError("regmean_grams: no examples; give a non-empty data set")
    return {f"{n}.weight" if n else "weight": (sums[n] / rows[n]).float() for n in linears if rows[n] > 0}


def _pointwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.stride) == (1, 1)
            and m.groups == 1 and m.padding in ((0, 0), 0, "valid"))


def _fan_in(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels  # type: ignore[return-value]


def _head(x: Any, n: int) -> Any:
    if isinstance(x, Tensor):
        return x[:n]
    return {k: v[:n] if isinstance(v, Tensor) else v for k, v in x.items()}


def save_tensors(tensors: dict[str, Tensor], path: str | Path) -> Path:
    """Write ``tensors`` as one safetensors file (atomically); the path a merge config names."""
    from safetensors.torch import save

    from transfuse.io import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))
    return path


def classifier_batches(model: nn.Module, dataset: Any, batch_size: int = 32) -> Iterator[Batch]:
    """``(input, labels)`` batches of a transfuse ``Dataset`` for a ``Classifier`` (eval transforms,
    on the model's device): what ``diagonal_fisher``/``regmean_grams`` take for pipeline models."""
    from transfuse.train.loaders import make_loader

    backbone = model.backbone  # type: ignore[attr-defined]
    device = next(model.parameters()).device
    loader = make_loader(dataset, backbone, train=False, batch_size=batch_size, num_workers=0,
                         pin_memory=False)
    for x, y in loader:
        yield backbone.batch_to(x, device), y


def recompute_batchnorm(model: nn.Module, batches: Iterable[Batch]) -> int:
    """Reset every BatchNorm layer's running statistics and re-estimate them on ``batches``
    (``(input, labels)``; labels unused): the mean over batches of each batch's mean and unbiased
    variance (PyTorch's ``momentum=None``). Only the BatchNorm layers run in train mode (dropout
    stays off), weights do not change, and every module's mode and each layer's momentum are
    restored; if no batch comes, or the pass fails, the old statistics are put back.

    A merge averages the weights but not the statistics they would produce, so a merged network
    with BatchNorm normalises with the wrong scale; re-estimating on a few hundred unlabelled
    inputs of a task (its training data) fixes that for the task. Returns the number of layers.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    saved = [(m.momentum, {k: v.clone() for k, v in m.named_buffers(recurse=False)}) for m in layers]
    seen, done = 0, False
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x, _ in batches:
                model(x)
                seen += 1
        done = seen > 0  # only a whole pass replaces the statistics
    finally:
        for m, (momentum, buffers) in zip(layers, saved):
            m.momentum = momentum
            if not done:
                for k, v in buffers.items():
                    getattr(m, k).copy_(v)
        for m, mode in modes:
            m.training = mode
    if not done:
        raise UserError("recompute_batchnorm: no batches were given; pass the task's training data")
    return len(layers)
