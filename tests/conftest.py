"""Shared fixtures: an isolated feature cache and small real image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _isolated_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["TRANSFUSE_FEATURE_CACHE"] = str(tmp_path_factory.mktemp("features"))


def write_digits_folder(root: Path, classes: tuple[int, ...] = (0, 1, 7), per_class: int = 12,
                        size: int = 32) -> Path:
    """An image folder of real handwritten digits (sklearn's ``load_digits``), upscaled PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        (root / f"digit{c}").mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(d.target == c)[:per_class]
        for i in idx:
            img = (d.images[i] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(img).resize((size, size), Image.NEAREST).save(root / f"digit{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("digits"))
