"""Fine-tuning and LP-FT, with the epoch chosen on an inner validation split.

Each outer fold's training rows are split again (``train.finetune.inner_val``, stratified): the
model trains on the inner part and keeps its best epoch by the inner validation part, so the outer
fold that scores it was never used to stop, to checkpoint or to choose. The shipped model is
refitted on all training rows for the median of the folds' best epochs. ``inner_val: 0`` trains a
fixed schedule (``epochs``) with no selection at all. LP-FT (Kumar et al. 2022,
https://arxiv.org/abs/2202.10054) starts each fit from a probe fitted on the same rows, with its
own weight decay (``train.finetune.probe_weight_decay``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transfuse.adapt.cross_fit import Fit, inner_split
from transfuse.adapt.probe import make_head
from transfuse.config import FinetuneConfig, HeadConfig


def lp_ft_head(head: HeadConfig, ft: FinetuneConfig) -> HeadConfig:
    """The probe head LP-FT starts from: ``head`` with ``ft.probe_weight_decay`` (unless null)."""
    if ft.probe_weight_decay is None:
        return head
    return head.model_copy(update={"weight_decay": ft.probe_weight_decay})


class FinetuneStrategy:
    """``strategy``: ``finetune`` (fresh head) or ``lp_ft`` (``features``: the cached features of
    the training part, for the probe it starts from). ``seed_shift`` (a variant with its own seed,
    ``adapt.variants``) moves the training seed (head init, batch order, augmentation, dropout)
    and not the inner split's: every fine-tune of a backbone chooses on the same inner rows."""

    def __init__(self, strategy: str, backbone: Any, train: Any, test: Any, ft: FinetuneConfig,
                 head: HeadConfig, workdir: Path, *, features: np.ndarray | None = None,
                 augment: Any = None, batch_size: int = 64, progress: bool = False, seed_shift: int = 0):
        if ft.head_lr == "auto":
            # LP-FT's head is already trained: a 10x head lr (right for a fresh head) undoes it in the
            # first epoch (emoji fold 0 at 224 px: 0.74 -> 0.69), so head and backbone move together
            ft = ft.model_copy(update={"head_lr": ft.resolved_head_lr(head_trained=strategy == "lp_ft")})
        self.strategy, self.backbone, self.train, self.test = strategy, backbone, train, test
        self.ft, self.head, self.workdir, self.features = ft, head, workdir, features
        self.augment, self.batch_size, self.progress = augment, batch_size, progress
        self.seed_shift = seed_shift
        self.y, self.n_classes = train.labels, len(train.classes)

    def _init(self, rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        if self.strategy != "lp_ft":
            return None
        head = lp_ft_head(self.head, self.ft)
        return make_head(head, self.n_classes, seed).fit(self.features[rows], self.y[rows]).to_linear()

    def fit(self, rows: np.ndarray, seed: int, tag: str, chosen: dict[str, Any] | None = None) -> Fit:
        from transfuse.train.finetune import finetune

        train_seed = seed + self.seed_shift
        kw = dict(augment=self.augment, seed=train_seed, progress=self.progress)
        if chosen is None and self.ft.inner_val > 0:
            itr, iva = (rows[i] for i in inner_split(self.y[rows], self.ft.inner_val, seed))
            res = finetune(self.backbone, self.train.subset(itr), self.train.subset(iva), self.n_classes,
                           self.ft, self.workdir / tag, head_init=self._init(itr, train_seed), **kw)
            return Fit(res.model, {"epochs": res.best_epoch}, res.history)
        epochs = (chosen or {}).get("epochs", self.ft.epochs)
        res = finetune(self.backbone, self.train.subset(rows), None, self.n_classes,
                       self.ft.model_copy(update={"epochs": epochs}), self.workdir / tag,
                       head_init=self._init(rows, train_seed), **kw)
        return Fit(res.model, {"epochs": epochs} if chosen else {}, res.history)

    def predict(self, fit: Fit, rows: np.ndarray | None) -> np.ndarray:
        ds = self.test if rows is None else self.train.subset(rows)
        if not len(ds):
            return np.zeros((0, self.n_classes), np.float32)
        return fit.model.predict_proba(ds, batch_size=self.batch_size)

    def final_choice(self, chosen: list[dict[str, Any]]) -> dict[str, Any] | None:
        epochs = [c["epochs"] for c in chosen if "epochs" in c]
        return {"epochs": max(1, int(round(float(np.median(epochs)))))} if epochs else None
