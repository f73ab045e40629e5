"""Feature-level fusion: one head over the cached features of several backbones or modalities.

Each block (one backbone's or one modality's features, ``(n, d_i)``) is standardised per feature,
optionally projected to a common width ``proj_dim`` by its own linear map, optionally re-weighted
per example by a learned softmax gate over blocks, then concatenated and fed to a linear or MLP
head. The fit is full-batch torch with the objective of :mod:`transfuse.train.heads`.

References: early fusion of several networks' features, e.g. Ngiam et al., "Multimodal Deep
Learning", ICML 2011; gated fusion of modalities: Arevalo et al., "Gated Multimodal Units for
Information Fusion", ICLR workshop 2017, https://arxiv.org/abs/1702.01992
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transfuse.config import ClassWeight, FeatureFusionConfig, HeadKind, Optimizer, field_defaults
from transfuse.errors import UserError
from transfuse.train.heads import (
    check_features,
    class_weights,
    cpu_threads,
    encode_labels,
    fit_full_batch,
    l2_penalty,
    mlp,
    resolve_optimizer,
    smoothed_ce,
    standardizer,
    validate_config,
)

Blocks = Mapping[str, np.ndarray] | Sequence[np.ndarray]
_FUSION = field_defaults(FeatureFusionConfig)


class _FusionNet(torch.nn.Module):
    def __init__(self, dims: list[int], cfg: FeatureFusionConfig, n_classes: int):
        super().__init__()
        self.proj = (
            torch.nn.ModuleList(torch.nn.Linear(d, cfg.proj_dim) for d in dims)
            if cfg.proj_dim
            else None
        )
        widths = [cfg.proj_dim] * len(dims) if cfg.proj_dim else list(dims)
        self.gate = torch.nn.ModuleList(torch.nn.Linear(w, 1) for w in widths) if cfg.gate else None
        if self.gate is not None:  # start from a uniform gate: the plain concatenation
            for g in self.gate:
                torch.nn.init.zeros_(g.weight)
                torch.nn.init.zeros_(g.bias)
        d = sum(widths)
        self.head = (
            torch.nn.Linear(d, n_classes)
            if cfg.head == "linear"
            else mlp(d, cfg.hidden, n_classes, cfg.dropout)
        )

    def parts(self, zs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        hs = [p(z) for p, z in zip(self.proj, zs, strict=True)] if self.proj is not None else zs
        if self.gate is None:
            return hs, None
        g = torch.softmax(
            torch.cat([gl(h) for gl, h in zip(self.gate, hs, strict=True)], dim=1), dim=1
        )
        return hs, g

    def forward(self, zs: list[torch.Tensor]) -> torch.Tensor:
        hs, g = self.parts(zs)
        if g is not None:  # scaled by the block count so a uniform gate is the identity
            hs = [h * (len(hs) * g[:, b : b + 1]) for b, h in enumerate(hs)]
        return self.head(torch.cat(hs, dim=1))


class FeatureFusionClassifier(ClassifierMixin, BaseEstimator):
    """A classifier over several feature blocks (``fit(blocks, y)``, ``predict_proba(blocks)``).

    ``blocks``: a dict ``{name: (n, d_i)}`` (names must match at predict time, any order) or a list
    (same order). Parameters: those of :class:`~transfuse.config.FeatureFusionConfig` (defaults
    included), plus ``n_classes`` (labels are then ints in ``[0, n_classes)``, see
    :class:`~transfuse.train.heads.HeadClassifier`) and ``device``. Deterministic for a given
    ``seed``.
    """

    def __init__(
        self,
        proj_dim: int | None = _FUSION["proj_dim"],
        gate: bool = _FUSION["gate"],
        head: HeadKind = _FUSION["head"],
        hidden: int = _FUSION["hidden"],
        dropout: float = _FUSION["dropout"],
        weight_decay: float = _FUSION["weight_decay"],
        label_smoothing: float = _FUSION["label_smoothing"],
        class_weight: ClassWeight = _FUSION["class_weight"],
        max_iter: int = _FUSION["max_iter"],
        lr: float = _FUSION["lr"],
        optimizer: Optimizer = _FUSION["optimizer"],
        tol: float = _FUSION["tol"],
        seed: int = _FUSION["seed"],
        n_classes: int | None = None,
        device: str = "cpu",
    ):
        self.proj_dim = proj_dim
        self.gate = gate
        self.head = head
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.lr = lr
        self.optimizer = optimizer
        self.tol = tol
        self.seed = seed
        self.n_classes = n_classes
        self.device = device

    @property
    def config(self) -> FeatureFusionConfig:
        params = {
            k: v for k, v in self.get_params().items() if k in FeatureFusionConfig.model_fields
        }
        return validate_config(FeatureFusionConfig, params, type(self).__name__)  # type: ignore[return-value]

    def _dtype(self) -> torch.dtype:
        return torch.float64 if self.device == "cpu" and self.head == "linear" else torch.float32

    def _blocks(self, blocks: Blocks, fitted: bool) -> list[np.ndarray]:
        if isinstance(blocks, np.ndarray) or not isinstance(blocks, Mapping | Sequence):
            raise UserError(
                "blocks must be a dict {name: (n, d) array} or a list of arrays, one per backbone"
            )
        names = (
            list(blocks) if isinstance(blocks, Mapping) else [str(i) for i in range(len(blocks))]
        )
        arrays = list(blocks.values()) if isinstance(blocks, Mapping) else list(blocks)
        if not arrays:
            raise UserError("blocks is empty; give at least one feature block")
        if fitted:
            if set(names) != set(self.block_names_):
                raise UserError(
                    f"blocks {sorted(names)} do not match the fitted blocks "
                    f"{sorted(self.block_names_)}"
                )
            by_name = dict(zip(names, arrays, strict=True))
            arrays = [by_name[k] for k in self.block_names_]
            names = list(self.block_names_)
        out = [
            check_features(a, f"block {k!r}", self.block_dims_[i] if fitted else None)
            for i, (k, a) in enumerate(zip(names, arrays, strict=True))
        ]
        lengths = {len(a) for a in out}
        if len(lengths) > 1:
            raise UserError(
                "blocks have different numbers of rows "
                f"{dict(zip(names, map(len, out), strict=True))}"
            )
        if not fitted:
            self.block_names_ = names
        return out

    def _tensors(self, arrays: list[np.ndarray], device: str) -> list[torch.Tensor]:
        return [
            torch.as_tensor((a - m) / s, dtype=self._dtype(), device=torch.device(device))
            for a, m, s in zip(arrays, self.means_, self.scales_, strict=True)
        ]

    def fit(self, blocks: Blocks, y, sample_weight=None) -> FeatureFusionClassifier:
        cfg = self.config
        arrays = self._blocks(blocks, fitted=False)
        self.block_dims_ = [a.shape[1] for a in arrays]
        self.classes_, y_idx = encode_labels(y, len(arrays[0]), self.n_classes)
        c = len(self.classes_)
        self.means_, self.scales_ = (list(t) for t in zip(*(standardizer(a) for a in arrays), strict=True))
        dev, dt = torch.device(self.device), self._dtype()
        zs = self._tensors(arrays, self.device)
        yt = torch.as_tensor(y_idx, device=dev)
        cw = torch.as_tensor(class_weights(y_idx, c, cfg.class_weight), dtype=dt, device=dev)
        sw = None
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if (
                sample_weight.shape != (len(y_idx),)
                or (sample_weight < 0).any()
                or sample_weight.sum() <= 0
            ):
                raise UserError(
                    "sample_weight must be non-negative, one per sample, with a positive sum"
                )
            sw = torch.as_tensor(sample_weight, dtype=dt, device=dev)
        with torch.random.fork_rng(devices=[]), cpu_threads(sum(a.size for a in arrays)):
            torch.manual_seed(cfg.seed)
            net = _FusionNet(self.block_dims_, cfg, c).to(device=dev, dtype=dt)

            def loss_fn() -> torch.Tensor:
                data = smoothed_ce(
                    net(zs),
                    yt,
                    label_smoothing=cfg.label_smoothing,
                    class_weight=cw,
                    sample_weight=sw,
                )
                return data + 0.5 * cfg.weight_decay * l2_penalty(net)

            opt = resolve_optimizer(cfg.optimizer, cfg.dropout, cfg.head == "linear")
            self.loss_ = fit_full_batch(
                net, loss_fn, optimizer=opt, max_iter=cfg.max_iter, lr=cfg.lr, tol=cfg.tol
            )
        self.net_ = net.cpu().eval()
        return self

    def _eval_tensors(self, blocks: Blocks) -> list[torch.Tensor]:
        check_is_fitted(self, "net_")
        return self._tensors(self._blocks(blocks, fitted=True), "cpu")

    def decision_function(self, blocks: Blocks) -> np.ndarray:
        zs = self._eval_tensors(blocks)
        with torch.no_grad(), cpu_threads(sum(z.numel() for z in zs)):
            return self.net_.to(self._dtype())(zs).double().numpy()

    def predict_proba(self, blocks: Blocks) -> np.ndarray:
        z = self.decision_function(blocks)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, blocks: Blocks) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(blocks), axis=1)]

    def gate_weights(self, blocks: Blocks) -> np.ndarray:
        """Per-example softmax gate over blocks, ``(n, n_blocks)`` in ``block_names_`` order."""
        if not self.gate:
            raise UserError("gate_weights() needs gate=True")
        zs = self._eval_tensors(blocks)
        with torch.no_grad():
            _, g = self.net_.to(self._dtype()).parts(zs)
        return g.double().numpy()
