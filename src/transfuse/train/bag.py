"""A fold bag: the k fold models of one fine-tuned candidate served as one model, their class
probabilities averaged (bagging over the cross-validation folds' training sets: Breiman 1996,
https://doi.org/10.1007/BF00058655; each member is a model the run already trained and scored).

Every member is a :class:`~transfuse.train.finetune.Classifier` over the same backbone
architecture with the same preprocessing, so one decoded batch feeds all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transfuse.train.loaders import predict_batches

#: Probabilities are clipped here before a log (as serving's calibration and the ONNX graph do).
EPS = 1e-15


class FoldBag(nn.Module):
    """``networks`` (the fold models, in fold order) as one classifier: the mean of their softmax
    probabilities. ``forward`` returns the log of that mean (a softmax of it gives the mean back),
    so a calibration temperature, an ONNX export or an ensemble treats the bag like one network's
    logits."""

    def __init__(self, networks: Sequence[nn.Module]):
        super().__init__()
        if not networks:
            raise ValueError("a fold bag needs at least one network")
        self.networks = nn.ModuleList(networks)

    @property
    def backbone(self) -> Any:
        """The first network's backbone: the preprocessing (transform, collate, device transfer)
        every member shares."""
        return self.networks[0].backbone

    @property
    def n_classes(self) -> int:
        return self.networks[0].n_classes

    def mean_proba(self, batch: Any) -> torch.Tensor:
        return torch.stack([F.softmax(n(batch).float(), dim=-1) for n in self.networks]).mean(0)

    def forward(self, batch: Any) -> torch.Tensor:
        return torch.log(self.mean_proba(batch).clamp(EPS, 1.0))

    @torch.inference_mode()
    def predict_proba(self, dataset: Any, batch_size: int = 64, num_workers: int | str = 0) -> np.ndarray:
        """Mean class probabilities ``(len(dataset), n_classes)`` in dataset order (eval mode);
        each batch is decoded once for all networks."""
        return predict_batches(self, dataset, self.mean_proba, self.n_classes, batch_size, num_workers)
