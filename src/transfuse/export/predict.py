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
    from transfuse.export.onnx import load_folder

    if not (Path(run_dir) / "model" / "model.json").exists():
        raise UserError(f"{str(run_dir)!r} has no chosen model (model/model.json); "
                        "finish the run first with 'transfuse resume'")
    return load_folder(Path(run_dir) / "model")


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif"}


def check_modality(paths: list[str], modality: str) -> None:
    """A one-line error for a file of another modality (e.g. a .wav given to an image model)."""
    kinds = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}
    for s in paths:
        suffix = Path(s).suffix.lower()
        other = next((m for m, sfx in kinds.items() if m != modality and suffix in sfx), None)
        if other is not None:
            wanted = {"image": "image files (png, jpg, ...)", "audio": "audio files (wav, flac, ...)",
                      "text": "texts or text files"}[modality]
            raise UserError(f"input {s!r} is an {other} file but this model takes {modality} inputs; "
                            f"give {wanted}")


def load_inputs(paths_or_texts: list[str], modality: str) -> Any:
    """Decode raw inputs into a :class:`~transfuse.data.base.Dataset` without labels."""
    from transfuse.data.base import Dataset

    if modality == "text":
        check_modality([s for s in paths_or_texts if Path(s).is_file()], modality)
        items = []
        for s in paths_or_texts:
            p = Path(s)
            items.append(p.read_text(encoding="utf-8", errors="replace") if p.is_file() else s)
        return Dataset("text", items, np.zeros(len(items), int), ["?"], [str(i) for i in range(len(items))])
    missing = [s for s in paths_or_texts if not Path(s).is_file()]
    if missing:
        raise UserError(f"input file {missing[0]!r} does not exist; give paths of {modality} files")
    check_modality(list(paths_or_texts), modality)
    if modality == "image":
        from transfuse.data.images import load_image as loader
    else:
        from transfuse.data.audio import AudioLoader

        loader = AudioLoader()
    return Dataset(modality, list(paths_or_texts), np.zeros(len(paths_or_texts), int), ["?"],
                   list(paths_or_texts), loader=loader)


class OnnxClassifier:
    """The exported graph behind the same ``predict_proba(dataset, batch_size)`` as the torch
    model. The backbones only preprocess (transform and collate); onnxruntime computes."""

    def __init__(self, run_dir: str | Path, info: dict[str, Any], meta: dict[str, Any], int8: bool = False):
        from transfuse.export.onnx import parts_from_meta, session

        self.parts = parts_from_meta(meta, info)
        f = meta["int8"]["file"] if int8 and meta.get("int8") else meta["file"]
        self.session = session(Path(run_dir) / "model" / f)

    def predict_proba(self, dataset: Any, batch_size: int = 32) -> np.ndarray:
        from transfuse.export.onnx import batched_proba

        return batched_proba(self.session, self.parts, dataset, batch_size)


def resolve_engine(run_dir: str | Path, engine: str) -> str:
    """``auto``: onnx when the run has an exported model, else torch."""
    from transfuse.export.onnx import read_meta

    if engine not in ("auto", "onnx", "torch"):
        raise UserError(f"--engine {engine!r} is not valid; use onnx, torch or auto")
    has_onnx = read_meta(run_dir) is not None
    if engine == "onnx" and not has_onnx:
        raise UserError(f"{str(run_dir)!r} has no ONNX model; run 'transfuse export {run_dir} --format onnx' "
                        "first, or use --engine torch")
    return engine if engine != "auto" else ("onnx" if has_onnx else "torch")


def predict(run_dir: str | Path, inputs: list[str], batch_size: int = 32, engine: str = "auto") -> dict[str, Any]:
    """Class probabilities for raw inputs: ``{"classes", "proba": (n, C) array, "engine"}``.

    The run's calibration temperature (``model.json``) is applied on both engines (the ONNX
    graph has it folded in)."""
    from transfuse.export.onnx import read_meta

    if not (Path(run_dir) / "model" / "model.json").exists():
        load_model(run_dir)  # raises the one-line 'no chosen model' error
    engine = resolve_engine(run_dir, engine)
    info = read_json(Path(run_dir) / "model" / "model.json")
    data = load_inputs(inputs, info["modality"])
    if engine == "onnx":
        proba = OnnxClassifier(run_dir, info, read_meta(run_dir) or {}).predict_proba(data, batch_size)
    else:
        model, info = load_model(run_dir)
        proba = np.asarray(model.predict_proba(data, batch_size=batch_size))
        if info.get("temperature") is not None:
            from transfuse.evaluate.calibration import apply_temperature

            proba = apply_temperature(proba, float(info["temperature"])).astype(np.float32)
    return {"classes": info["classes"], "proba": np.asarray(proba), "engine": engine}
