"""DataLoaders that feed a backbone: decoded input -> backbone transform -> collated batch."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from transfuse.backbones.base import Backbone
from transfuse.data.base import Dataset
from transfuse.errors import UserError


class TransformedDataset(TorchDataset):
    """``(transform(dataset.load(i)), label)`` for every sample of a transfuse Dataset."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any]):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.dataset.load(i)), int(self.dataset.labels[i])


class BatchCollate:
    """Collate ``(input, label)`` pairs into ``(backbone.collate(inputs), labels tensor)``."""

    def __init__(self, collate: Callable[[list[Any]], Any]):
        self.collate = collate

    def __call__(self, samples: list[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
        inputs, labels = zip(*samples)
        return self.collate(list(inputs)), torch.tensor(labels, dtype=torch.long)


def auto_num_workers() -> int:
    """Loader processes for this machine: none on <= 2 cores (they would steal the model's), else
    half the cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores // 2)


def make_loader(
    dataset: Dataset,
    backbone: Backbone,
    train: bool,
    batch_size: int,
    augment: Any = None,
    num_workers: int | Literal["auto"] = "auto",
    pin_memory: bool | Literal["auto"] = "auto",
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader yielding ``(batch, labels)``.

    ``train=True`` shuffles (seeded by ``seed``: the same seed gives the same order) and applies
    the backbone's training transform with ``augment``; ``train=False`` keeps the dataset order.
    """
    if batch_size < 1:
        raise UserError(f"batch_size: must be >= 1, got {batch_size}")
    workers = auto_num_workers() if num_workers == "auto" else int(num_workers)
    if workers < 0:
        raise UserError(f"num_workers: must be >= 0 or 'auto', got {num_workers}")
    pin = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
    generator = torch.Generator().manual_seed(int(seed)) if train else None
    return DataLoader(
        TransformedDataset(dataset, backbone.make_transform(train=train, augment=augment)),
        batch_size=batch_size,
        shuffle=train,
        generator=generator,
        collate_fn=BatchCollate(backbone.collate),
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        drop_last=drop_last,
    )


def predict_batches(model: Any, dataset: Any, fn: Any, n_classes: int, batch_size: int = 64,
                    num_workers: int | str = 0) -> np.ndarray:
    """``fn(batch)`` (class probabilities) over ``dataset`` in order, ``model`` in eval mode for the
    pass (its mode restored after), each batch decoded once by ``model.backbone``'s eval transform;
    ``(len(dataset), n_classes)``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, model.backbone, train=False, batch_size=batch_size,
                         num_workers=num_workers, pin_memory=device.type == "cuda")
    try:
        with torch.inference_mode():
            out = [fn(model.backbone.batch_to(x, device)).cpu() for x, _ in loader]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, n_classes), np.float32)
