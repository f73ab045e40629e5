"""Rebuild a run's chosen model and predict on raw inputs (files or texts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transfuse.errors import UserError


def model_folder(run_dir: str | Path, candidate: str | None = None) -> Path:
    """The folder of the run's chosen model, or of one of its candidates."""
    from transfuse.artifacts.store import RunFolder

    run = RunFolder(run_dir)
    if candidate is not None:
        return run.candidate(candidate)
    if not (run.model_dir / "model.json").exists():
        raise UserError(f"{str(run_dir)!r} has no chosen model (model/model.json); "
                        "finish the run first with 'transfuse resume'")
    return run.model_dir


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif"}


def _is_file(s: str) -> bool:
    """``s`` names an existing file (a long text is not a path: the OS refuses its name)."""
    try:
        return Path(s).is_file()
    except (OSError, ValueError):
        return False


def check_modality(paths: list[str], modality: str) -> None:
    """A one-line error for a file of another modality (e.g. a .wav given to an image model)."""
    kinds = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}
    for s in paths:
        suffix = Path(s).suffix.lower()
        other = next((m for m, sfx in kinds.items() if m != modality and suffix in sfx), None)
        if other is not None:
            wanted = {"image": "image files (png, jpg, ...)", "audio": "audio files (wav, flac, ...)",
                      "text": "text files (one text per line), --text TEXT or --csv FILE"}[modality]
            raise UserError(f"input {s!r} is an {other} file but this model takes {modality} inputs; "
                            f"give {wanted}")


def audio_check(folder: Path) -> Any:
    """The run's audio checks (its ``data.options`` thresholds, else the sources' defaults)."""
    from transfuse.data.audio_folder import AudioCheck

    opts: dict[str, Any] = {}
    try:
        from transfuse.artifacts.serve import run_root
        from transfuse.config import read_yaml

        opts = dict((read_yaml(run_root(folder) / "config.yaml").get("data") or {}).get("options") or {})
    except (UserError, AttributeError, TypeError):
        pass
    keys = ("max_seconds", "min_sample_rate", "silence_threshold")
    return AudioCheck(**{k: opts[k] for k in keys if k in opts})


def input_problem(item: str, modality: str, audio_check: Any = None) -> str | None:
    """Why one raw input cannot be predicted (the reason ``fit`` would quarantine it), or None."""
    if modality == "text":
        return None
    if not _is_file(item):
        return "file not found"
    if modality == "image":
        from transfuse.data.images import check_image

        return check_image(item)
    if modality == "audio":
        from transfuse.data.audio_folder import AudioCheck, check_file

        return check_file(Path(item), audio_check or AudioCheck())
    return None


def multimodal_columns(folder: Path) -> dict[str, list[str]]:
    """A multimodal model's inputs, ``{modality: table columns}``: the run's own manifest columns
    (``image_column``, ``audio_column``, ``text_columns``, several texts joined with ``" | "`` as
    at fit time), or ``image`` / ``text`` for the ``emoji_multimodal`` sample set."""
    from transfuse.artifacts.serve import run_root
    from transfuse.config import read_yaml

    data = read_yaml(run_root(folder) / "config.yaml").get("data") or {}
    opts = data.get("options") or {}
    if data.get("source") == "emoji_multimodal":
        return {"image": ["image"], "text": ["text"]}
    texts = opts.get("text_columns") or []
    cols = {"image": [opts.get("image_column")], "audio": [opts.get("audio_column")],
            "text": [texts] if isinstance(texts, str) else list(texts)}
    return {m: [str(c) for c in cs] for m, cs in cols.items() if cs and all(cs)}


def _multimodal_inputs(items: list[Any], folder: Path | None) -> tuple[Any, dict[int, str]]:
    """``{modality: file path or text}`` per input -> a ``MultimodalDataset``; an input missing a
    modality of the model, or with a bad file or an empty text, gets a reason."""
    wanted = sorted(multimodal_columns(folder)) if folder is not None else None
    for it in items:
        if not isinstance(it, dict):
            raise UserError(f"a multimodal model takes one {{modality: input}} mapping per input "
                            f"({', '.join(wanted or ['image', 'text'])}), got {type(it).__name__} {str(it)[:60]!r}; "
                            "from the command line give a table with --csv")
    audio = audio_check(folder) if folder is not None else None
    errors: dict[int, str] = {}
    for i, it in enumerate(items):
        missing = [m for m in wanted or sorted(it) if m not in it or it[m] is None or not str(it[m]).strip()]
        if missing:
            errors[i] = f"no {' or '.join(missing)} input"
            continue
        why = next((f"{m}: {w}" for m in sorted(it) if m != "text"
                    and (w := input_problem(str(it[m]), m, audio))), None)
        if why:
            errors[i] = why
    good = [{m: str(v) for m, v in it.items() if wanted is None or m in wanted}
            for i, it in enumerate(items) if i not in errors]
    return multimodal_dataset(good, [str(i) for i in range(len(good))]), errors


def multimodal_dataset(items: list[dict[str, Any]], ids: list[str],
                       loaders: dict[str, Any] | None = None) -> Any:
    """Checked ``{modality: input}`` items -> an unlabelled ``MultimodalDataset``. ``loaders``
    decode a modality's inputs (default: image and audio files as ``fit`` reads them)."""
    from transfuse.data.base import _identity
    from transfuse.data.multimodal import MULTIMODAL, MultimodalDataset

    used: dict[str, Any] = {"text": _identity}
    if any("image" in it for it in items):
        from transfuse.data.images import load_image

        used["image"] = (loaders or {}).get("image") or load_image
    if any("audio" in it for it in items):
        from transfuse.data.audio import AudioLoader

        used["audio"] = (loaders or {}).get("audio") or AudioLoader()
    return MultimodalDataset(MULTIMODAL, items, np.zeros(len(items), int), ["?"], list(ids), loaders=used)


def load_inputs(paths_or_texts: list[Any], modality: str, folder: Path | None = None
                ) -> tuple[Any, dict[int, str]]:
    """Decode raw inputs (file paths; texts for a text model; ``{modality: path or text}`` for a
    multimodal model) into a :class:`~transfuse.data.base.Dataset` without labels, and the
    inputs left out: ``{position: reason}`` (a missing, empty, corrupt or undecodable file, a
    decompression bomb, silent or over-long audio). A file of another modality is an error for the
    whole command (the wrong model or the wrong files)."""
    from transfuse.data.base import Dataset
    from transfuse.data.multimodal import MULTIMODAL

    if modality == MULTIMODAL:
        return _multimodal_inputs(list(paths_or_texts), folder)
    if modality == "text":  # literal texts: a text that names a file is still only a text
        items = [str(s) for s in paths_or_texts]
        return Dataset("text", items, np.zeros(len(items), int), ["?"], [str(i) for i in range(len(items))]), {}
    check_modality(list(paths_or_texts), modality)
    audio = audio_check(folder) if modality == "audio" and folder is not None else None
    errors = {i: why for i, s in enumerate(paths_or_texts) if (why := input_problem(s, modality, audio))}
    good = [s for i, s in enumerate(paths_or_texts) if i not in errors]
    if modality == "image":
        from transfuse.data.images import load_image as loader
    else:
        from transfuse.data.audio import AudioLoader

        loader = AudioLoader()
    return Dataset(modality, good, np.zeros(len(good), int), ["?"], good, loader=loader), errors


class OnnxClassifier:
    """The exported graph behind the same ``predict_proba(dataset, batch_size)`` as the torch
    model. The backbones only preprocess (transform and collate); onnxruntime computes."""

    def __init__(self, folder: Path, meta: dict[str, Any], int8: bool = False):
        from transfuse.export.onnx import parts_from_meta, session
        from transfuse.export.preprocess import torch_free_parts

        # an image or text model with its preprocessing recorded runs without torch (PIL/tokenizers + numpy);
        # others (and exports made before the recipe was recorded) rebuild their backbones
        self.free_parts = torch_free_parts(meta)
        self.parts = None if self.free_parts is not None else parts_from_meta(meta)
        q = meta.get("int8") or {}
        if int8 and not q.get("file"):
            raise UserError(f"{folder}: no int8 model ({q.get('reason') or 'export it with --int8'}); "
                            "use the fp32 ONNX model")
        f = q["file"] if int8 else meta["file"]
        self.session = session(folder / f)

    def predict_proba(self, dataset: Any, batch_size: int = 32) -> np.ndarray:
        from transfuse.export.onnx import batched_proba

        if self.free_parts is not None:
            from transfuse.export.preprocess import proba

            return proba(self.session, self.free_parts, dataset, batch_size)
        return batched_proba(self.session, self.parts, dataset, batch_size)


ENGINES = ("auto", "onnx", "onnx-int8", "torch")


def resolve_engine(folder: Path, engine: str) -> str:
    """``auto``: onnx when the model has been exported, else torch; ``onnx-int8``: the int8 ONNX
    model ``export --int8`` shipped."""
    from transfuse.export.onnx import read_meta

    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r} is not valid; use one of: {', '.join(ENGINES)}")
    has_onnx = read_meta(folder) is not None
    if engine in ("onnx", "onnx-int8") and not has_onnx:
        raise UserError(f"{str(folder)!r} has no ONNX model; run 'transfuse export' on it first, or use "
                        "--engine torch")
    return engine if engine != "auto" else ("onnx" if has_onnx else "torch")


def predict(run_dir: str | Path, inputs: list[str], batch_size: int = 32, engine: str = "auto",
            candidate: str | None = None) -> dict[str, Any]:
    """Class probabilities for raw inputs: ``{"classes", "proba": (n, C) array, "engine",
    "errors": {position: reason}}``, from the run's chosen model or (``candidate``) one of its
    candidates. An input that cannot be read gets a reason in ``errors`` and a row of NaN in
    ``proba``; the others are answered. The calibration temperature is applied on both engines
    (the ONNX graph has it folded in)."""
    from transfuse.artifacts.serve import load_model, predict_proba
    from transfuse.artifacts.spec import load_spec
    from transfuse.export.onnx import read_meta

    folder = model_folder(run_dir, candidate)
    spec = load_spec(folder)
    engine = resolve_engine(folder, engine)
    data, errors = load_inputs(inputs, spec.modality, folder)
    p = np.zeros((0, len(spec.classes)), np.float32)
    if len(data):
        if engine.startswith("onnx"):
            p = np.asarray(OnnxClassifier(folder, read_meta(folder) or {}, int8=engine == "onnx-int8")
                           .predict_proba(data, batch_size))
        else:
            model, spec = load_model(folder)
            p = np.asarray(predict_proba(model, spec, data, batch_size))
    proba = np.full((len(inputs), len(spec.classes)), np.nan, np.result_type(p.dtype, np.float32))
    proba[[i for i in range(len(inputs)) if i not in errors]] = p
    return {"classes": spec.classes, "proba": proba, "engine": engine, "errors": errors}
