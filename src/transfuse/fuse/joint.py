"""Joint fine-tuning of several backbones under one late-fusion MLP (in the spirit of AutoGluon's
``fusion_mlp``: each backbone's features are normalised, concatenated and classified by an MLP,
and everything is trained end to end).

Costly: every backbone is fine-tuned once per CV fold plus once on all rows, so the pipeline runs
it only with ``fuse.joint.enabled: true``. Inputs of several modalities work: each backbone reads
its own view of a :class:`~transfuse.data.multimodal.MultimodalDataset`.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from transfuse.adapt.cross_fit import oof_loop, score
from transfuse.adapt.result import CandidateResult


class JointFusionNet(nn.Module):
    """``{name: backbone}`` -> LayerNorm per backbone -> concat -> MLP -> logits."""

    def __init__(self, backbones: dict[str, nn.Module], n_classes: int, hidden: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        self.names = list(backbones)
        self.backbones = nn.ModuleDict(backbones)
        self.norms = nn.ModuleDict({k: nn.LayerNorm(b.feature_dim) for k, b in backbones.items()})
        d = sum(b.feature_dim for b in backbones.values())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, hidden), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, batches: dict[str, Any]) -> torch.Tensor:
        return self.head(torch.cat([self.norms[k](self.backbones[k](batches[k]).float())
                                    for k in self.names], dim=1))


class _Views(torch.utils.data.Dataset):
    """Row i -> ``({name: transformed input}, label)`` with each backbone's own view and transform."""

    def __init__(self, views: dict[str, Any], transforms: dict[str, Any], labels: np.ndarray):
        self.views, self.transforms, self.labels = views, transforms, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], int]:
        return {k: self.transforms[k](v.load(i)) for k, v in self.views.items()}, int(self.labels[i])


def _loader(net: JointFusionNet, data: Any, train: bool, batch_size: int, seed: int):
    from transfuse.data.multimodal import dataset_for

    views = {k: dataset_for(data, b.modality) for k, b in net.backbones.items()}
    tfs = {k: b.make_transform(train=train) for k, b in net.backbones.items()}

    def collate(samples):
        xs, ys = zip(*samples)
        return ({k: net.backbones[k].collate([x[k] for x in xs]) for k in net.names},
                torch.tensor(ys, dtype=torch.long))

    return torch.utils.data.DataLoader(_Views(views, tfs, data.labels), batch_size=batch_size,
                                       shuffle=train, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(seed) if train else None)


def _to(net: JointFusionNet, batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: net.backbones[k].batch_to(v, device) for k, v in batch.items()}


@torch.enable_grad()  # a caller (e.g. predict's load_model) may have turned gradients off
def fit_joint(backbones: dict[str, nn.Module], train: Any, n_classes: int, opts: Any, seed: int = 0
              ) -> JointFusionNet:
    """Train a :class:`JointFusionNet` (backbones at ``opts.lr``, head at ``opts.head_lr``, AdamW;
    BatchNorm statistics stay frozen: the small batches of a small dataset would corrupt them)."""
    from transfuse.train.cache import pick_device

    torch.manual_seed(seed)
    device = pick_device()
    net = JointFusionNet({k: copy.deepcopy(b) for k, b in backbones.items()}, n_classes, opts.hidden,
                         opts.dropout).to(device)
    opt = torch.optim.AdamW([
        {"params": net.backbones.parameters(), "lr": opts.lr},
        {"params": list(net.norms.parameters()) + list(net.head.parameters()), "lr": opts.head_lr}],
        weight_decay=0.01)
    net.train()
    for m in net.modules():  # small batches: keep the pretrained BatchNorm statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    for epoch in range(opts.epochs):
        for b, (x, y) in enumerate(_loader(net, train, True, opts.batch_size, seed + epoch)):
            if opts.max_train_batches is not None and b >= opts.max_train_batches:
                break
            loss = nn.functional.cross_entropy(net(_to(net, x, device)), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict_joint(net: JointFusionNet, data: Any, batch_size: int = 32) -> np.ndarray:
    device = next(net.parameters()).device
    out = [torch.softmax(net(_to(net, x, device)).float(), 1).cpu()
           for x, _ in _loader(net, data, False, batch_size, 0)]
    return torch.cat(out).numpy() if out else np.zeros((0, net.head[-1].out_features), np.float32)


def joint_candidate(opts: Any, data: Any, backbones: list, metric: str, seed: int
                    ) -> tuple[CandidateResult, JointFusionNet, list[str]]:
    """Cross-fitted CV (the run's folds; a fixed schedule, nothing selected) and the final fit on
    all rows of the joint late-fusion model; also the names of the backbones it trains."""
    t0 = time.perf_counter()
    bbs = {n: bb for n, _, _, bb in backbones if getattr(bb, "trainable", True)}
    y, c = data.train.labels, len(data.train.classes)
    oof = oof_loop(lambda k, tr, va: predict_joint(fit_joint(bbs, data.train.subset(tr), c, opts, seed + k),
                                                   data.train.subset(va), opts.batch_size),
                   data.folds, len(y), c)
    net = fit_joint(bbs, data.train, c, opts, seed)
    test = predict_joint(net, data.test, opts.batch_size) if len(data.test) else np.zeros((0, c))
    cand = CandidateResult(
        name="fusion/joint", kind="fusion", oof=oof.astype(np.float32), test=np.asarray(test, np.float32),
        cv_scores=[score(y[va], oof[va], metric) for _, va in data.folds],
        method="joint", members=list(bbs), fit_seconds=time.perf_counter() - t0,
        params=sum(int(p.numel()) for p in net.parameters()))
    return cand, net, list(bbs)
