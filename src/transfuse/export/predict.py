"""Rebuild a run's chosen model and predict on raw inputs (files or texts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transfuse.errors import UserError
from transfuse.io import read_json


def load_model(run_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The chosen model of ``run_dir`` in eval mode, and its spec: a torch ``Classifier`` for a
    single candidate, or (``kind: fusion``) whatever :mod:`transfuse.fuse.serving` rebuilds; both
    offer ``predict_proba(dataset, batch_size)``."""
    import torch
    from safetensors.torch import load_file
    from safetensors.torch import load_model as st_load_model

    from transfuse.backbones.registry import create_backbone
    from transfuse.train.finetune import Classifier

    folder = Path(run_dir) / "model"
    if not (folder / "model.json").exists():
        raise UserError(f"{str(run_dir)!r} has no chosen model (model/model.json); "
                        "finish the run first with 'transfuse resume'")
    info = read_json(folder / "model.json")
    if info.get("kind") == "fusion":
        from transfuse.fuse.serving import load_fused_model

        return load_fused_model(folder, info), info
    b = info["backbone"]
    backbone = create_backbone(b["name"], **b.get("options", {}))
    model = Classifier(backbone, len(info["classes"]))
    if "head" in info["files"]:
        if backbone.weights_hash() != info["weights_hash"]:
            raise UserError(f"backbone {b['name']!r} now has different weights than when "
                            f"{str(run_dir)!r} was trained; reinstall the version it used")
        head = load_file(str(folder / info["files"]["head"]))
        model.init_head(head["weight"].numpy(), head["bias"].numpy())
    else:
        st_load_model(model, str(folder / info["files"]["model"]))
    model.eval()
    torch.set_grad_enabled(False)
    return model, info


def load_inputs(paths_or_texts: list[str], modality: str) -> Any:
    """Decode raw inputs into a :class:`~transfuse.data.base.Dataset` without labels."""
    from transfuse.data.base import Dataset

    if modality == "text":
        items = []
        for s in paths_or_texts:
            p = Path(s)
            items.append(p.read_text(encoding="utf-8", errors="replace") if p.is_file() else s)
        return Dataset("text", items, np.zeros(len(items), int), ["?"], [str(i) for i in range(len(items))])
    missing = [s for s in paths_or_texts if not Path(s).is_file()]
    if missing:
        raise UserError(f"input file {missing[0]!r} does not exist; give paths of {modality} files")
    if modality == "image":
        from transfuse.data.images import load_image as loader
    else:
        from transfuse.data.audio import AudioLoader

        loader = AudioLoader()
    return Dataset(modality, list(paths_or_texts), np.zeros(len(paths_or_texts), int), ["?"],
                   list(paths_or_texts), loader=loader)


def predict(run_dir: str | Path, inputs: list[str], batch_size: int = 32) -> dict[str, Any]:
    """Class probabilities for raw inputs: ``{"classes": [...], "proba": (n, C) array}``."""
    model, info = load_model(run_dir)
    data = load_inputs(inputs, info["modality"])
    proba = model.predict_proba(data, batch_size=batch_size)
    return {"classes": info["classes"], "proba": np.asarray(proba)}
