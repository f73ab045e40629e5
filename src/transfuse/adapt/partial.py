"""Cached partial fine-tuning (strategy ``partial_ft``): train only the top of a backbone.

The backbone is cut by :func:`transfuse.backbones.split.split_backbone`; its frozen bottom runs
once per item (training and test), and every fit of the cross-fit loop (each fold's, the refit)
trains the top blocks + head on those cached activations, with fine-tuning's own honest epoch
choice (:class:`FinetuneStrategy`: an inner validation split per fold). One step on the cache
equals one step through the whole network with the bottom frozen (tests/test_partial.py). The
shipped model is the whole backbone with the trained top written back, served like any fine-tune.

Images can cache augmented views beside the plain one (``train.partial.views``): the bottom runs
once per item and view on the training part, each epoch draws one view per item, and every
evaluation (inner and outer validation, test) reads the plain view (docs/decisions.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfuse.adapt.finetune import FinetuneStrategy
from transfuse.backbones.split import Split, split_backbone
from transfuse.config import FinetuneConfig, HeadConfig, PartialConfig
from transfuse.data.base import Dataset


def cached_activations(split: Split, backbone: Any, ds: Dataset, batch_size: int, *, views: int = 0,
                       augment: Any = None, seed: int = 0) -> Dataset:
    """``ds`` with each item replaced by the bottom's activation of it (eval transform); with
    ``views`` (images), the item becomes ``(1 + views, ...)``: the plain view, then ``views`` views
    through the training transform with ``augment`` (seeded by ``seed``, item order kept)."""
    from torch.utils.data import DataLoader

    from transfuse.budget import check
    from transfuse.train.loaders import BatchCollate, TransformedDataset

    def pass_(train: bool) -> list[Any]:
        acts: list[Any] = []
        loader = DataLoader(TransformedDataset(ds, backbone.make_transform(train=train, augment=augment)),
                            batch_size=batch_size, shuffle=False, collate_fn=BatchCollate(backbone.collate))
        for batch, _ in loader:
            check("caching partial fine-tuning activations")
            acts.extend(split.bottom(batch))
        return acts

    acts = pass_(False) if len(ds) else []
    if views and acts and ds.modality == "image":
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            extra = [pass_(True) for _ in range(views)]
        finally:
            torch.set_rng_state(state)
        acts = [torch.stack([a, *(e[i] for e in extra)]) for i, a in enumerate(acts)]
    return Dataset(modality=ds.modality, items=acts, labels=ds.labels, classes=list(ds.classes),
                   ids=list(ds.ids), name=ds.name)


class PartialStrategy(FinetuneStrategy):
    """:class:`FinetuneStrategy` on the top of a split backbone (``features``: the whole
    backbone's cached features of the training part, for the probe the head starts from)."""

    def __init__(self, backbone: Any, train: Dataset, test: Dataset, ft: FinetuneConfig, head: HeadConfig,
                 partial: PartialConfig, workdir: Path, *, features: np.ndarray | None = None,
                 augment: Any = None, seed: int = 0, batch_size: int = 64, progress: bool = False):
        self.split = split_backbone(backbone, partial.blocks)
        with torch.inference_mode(False):
            c_train = cached_activations(self.split, backbone, train, batch_size, views=partial.views,
                                         augment=augment, seed=seed)
            c_test = cached_activations(self.split, backbone, test, batch_size)
        init = "lp_ft" if partial.init == "probe" else "finetune"
        super().__init__(init, self.split.top, c_train, c_test, ft, head, workdir,
                         features=features if init == "lp_ft" else None, batch_size=batch_size,
                         progress=progress)

    def shippable(self, model: Any) -> Any:
        """The whole network (frozen bottom + trained top + head) that ships and serves."""
        from transfuse.train.finetune import Classifier

        whole = Classifier(self.split.merge(model.backbone), model.n_classes, self.ft.dropout, self.ft.freeze_bn)
        whole.head.load_state_dict(model.head.state_dict())
        return whole.eval()
