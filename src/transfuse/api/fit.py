"""``transfuse.fit``: the whole pipeline (:func:`~transfuse.pipeline.run_experiment`) from Python,
on data on disk or in memory; returns a :class:`~transfuse.api.run.Run`."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transfuse.api.inputs import TABLE_SUFFIXES, Batch, _is_frame, as_batch, fingerprint, write_dataset
from transfuse.api.run import Run
from transfuse.errors import UserError

#: Backbones used when ``backbones`` is not given (all bundled: offline).
DEFAULT_BACKBONES = {"image": ["bundled:efficientnet_lite0"], "text": ["bundled:minilm_l6", "tfidf"],
                     "audio": ["bundled:whisper_tiny_en_encoder"]}
INPUTS_DIR = "inputs"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _disk_source(path: Path, modality: str | None) -> tuple[str, str, str]:
    """A folder or a table/manifest file -> (source, path, modality)."""
    from transfuse.api.inputs import AUDIO_SUFFIXES, IMAGE_SUFFIXES

    if path.is_dir():
        if modality is None:
            sfx = {f.suffix.lower() for f in path.rglob("*") if f.is_file()}
            modality = "audio" if sfx & AUDIO_SUFFIXES and not sfx & IMAGE_SUFFIXES else "image"
        return ("audio_folder" if modality == "audio" else "folder"), str(path), modality
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UserError(f"data {str(path)!r} is neither a folder of class sub-folders nor a .csv/.tsv/.jsonl "
                        "file; give one of those, or the inputs themselves with labels=")
    if modality is None:
        head = path.read_text(encoding="utf-8", errors="replace")[:4096].lower()
        modality = "image" if '"path"' in head or head.startswith("path") or ",path" in head else "text"
    source = {"text": "text_table", "image": "manifest", "audio": "audio_manifest"}[modality]
    return source, str(path), modality


def _data_section(data: Any, labels: Sequence[Any] | None, modality: str | None, column: str | None,
                  image_shape: tuple[int, int] | None, label: str, inputs_dir: Path, write: bool = True,
                  ) -> tuple[dict[str, Any], str]:
    """``data`` (+ ``labels``) -> the config's (source, path, options) and the modality."""
    if isinstance(data, (str, Path)) and labels is None:
        p = Path(data)
        if not p.exists():
            raise UserError(f"data {str(data)!r} does not exist; give a folder, a .csv/.jsonl file, or the inputs "
                            "with labels=")
        source, path, modality = _disk_source(p.resolve(), modality)
        return {"source": source, "path": path, "options": {}}, modality
    if _is_frame(data) and labels is None:
        if label not in [str(c) for c in data.columns]:
            raise UserError(f"the DataFrame has no label column {label!r}; its columns are "
                            f"{[str(c) for c in data.columns]}; name it with label='COLUMN'")
        labels = data[label].to_list()
        data = data.drop(columns=[label])
    if labels is None:
        raise UserError("labels are missing: give labels=[...] beside the inputs (or a folder / table that has them)")
    batch = data if isinstance(data, Batch) else as_batch(data, modality, column=column, image_shape=image_shape)
    labels = [str(y) for y in labels]
    if len(labels) != len(batch):
        raise UserError(f"{len(batch)} inputs but {len(labels)} labels; give one label per input")
    folder = inputs_dir / fingerprint(batch, labels)
    source, path = write_dataset(batch, labels, folder, write)
    return {"source": source, "path": path, "options": {}}, batch.modality


def build_config(data: Any, labels: Sequence[Any] | None = None, *, out: str | Path, modality: str | None = None,
                 backbones: Sequence[str] | None = None, strategies: Sequence[str] | None = None, folds: int = 5,
                 test_data: Any = None, test_labels: Sequence[Any] | None = None, image_size: int | None = None,
                 image_shape: tuple[int, int] | None = None, column: str | None = None, label: str = "label",
                 seed: int = 0, name: str | None = None, config: Mapping[str, Any] | None = None,
                 time_limit: float | None = None, preset: str | None = None) -> Any:
    """The validated :class:`~transfuse.config.ExperimentConfig` of a :func:`fit` call (in-memory
    inputs are written under ``OUT/inputs/<content hash>/`` first)."""
    from transfuse.artifacts.store import RunFolder
    from transfuse.config import validate_config
    out = Path(out).resolve()
    write = ddp_follower(config) is None  # a distributed run: rank 0 alone writes (docs/distributed.md)
    if write:
        RunFolder(out).claim()  # ours to write in (a new, empty or run folder) before the inputs go in
    section, modality = _data_section(data, labels, modality, column, image_shape, label, out / INPUTS_DIR, write)
    section["modality"] = modality
    if test_data is not None:
        tsec, _ = _data_section(test_data, test_labels, modality, column, image_shape, label, out / INPUTS_DIR,
                                write)
        section.update(test_source=tsec["source"], test_path=tsec["path"])
    raw: dict[str, Any] = {
        "name": name or out.name, "seed": seed, "data": section, "split": {"folds": folds},
        "backbones": list(backbones or DEFAULT_BACKBONES[modality]),
        "output": {"dir": str(out)},
    }
    if strategies or not (time_limit or preset):  # else the preset's strategies
        raw["adapt"] = {"strategies": list(strategies or ["linear_probe"])}
    if time_limit is not None or preset is not None:
        raw["budget"] = {k: v for k, v in (("time_limit", time_limit), ("preset", preset)) if v is not None}
    if image_size is not None:
        raw["preprocess"] = {"image_size": image_size}
    return validate_config(_merge(raw, config or {}), source="transfuse.fit")


def _finetune_settings(config: Mapping[str, Any] | None) -> tuple[str, int | str, int]:
    ft = dict(((config or {}).get("train") or {}).get("finetune") or {})
    return ft.get("accelerator", "auto"), ft.get("devices", "auto"), ft.get("num_nodes", 1)


def ddp_follower(config: Mapping[str, Any] | None) -> str | None:
    """This process's rank label when it is a follower of the distributed fine-tune ``config``
    asks for (its ``train.finetune`` section), else None."""
    from transfuse.distributed import follower_label

    return follower_label(*_finetune_settings(config))


def _check_one_run_folder(strategies: Sequence[str] | None, config: Mapping[str, Any] | None,
                          preset: str | None = None) -> None:
    """Under DDP every process runs the caller's script (Lightning's launcher re-runs it): a default
    run folder named by the clock would differ per process, so ``out`` must be given."""
    from transfuse.config import TRAINING_STRATEGIES
    from transfuse.distributed import planned_world_size

    variants = ((config or {}).get("adapt") or {}).get("variants")
    if not set(strategies or ()) & set(TRAINING_STRATEGIES) and preset is None and not variants:
        return  # no fine-tuning (a preset may add some)
    n = planned_world_size(*_finetune_settings(config))
    if n > 1:
        raise UserError(f"transfuse.fit: the fine-tuning runs on {n} processes (train.finetune.devices x num_nodes), "
                        "each running this script: give out= (the same run folder, on storage every process sees)")


def fit(data: Any, labels: Sequence[Any] | None = None, *, out: str | Path | None = None,
        modality: str | None = None, backbones: Sequence[str] | None = None,
        strategies: Sequence[str] | None = None, folds: int = 5, test_data: Any = None,
        test_labels: Sequence[Any] | None = None, image_size: int | None = None,
        image_shape: tuple[int, int] | None = None, column: str | None = None, label: str = "label",
        seed: int = 0, config: Mapping[str, Any] | None = None, progress: bool = False,
        overwrite: bool = False, time_limit: float | None = None, preset: str | None = None) -> Run:
    """Transfer, fuse and select by cross-validation, as ``transfuse fit``; returns the :class:`Run`.

    ``data``: a folder (one sub-folder per class) or a .csv/.jsonl table (labels inside), or the
    inputs themselves with ``labels``: texts, image files, numpy/PIL images, ``(wave, sr)`` pairs
    or a DataFrame (``label`` names its label column, ``column`` its input column). ``out``: the
    run folder (default ``runs/fit-<time>``); the same call on the same folder resumes it, a
    different one is refused unless the folder holds nothing finished or ``overwrite`` is set.
    ``config``: any other config sections as a nested dict (e.g. ``{"fuse": {"enabled": False}}``).
    ``time_limit``: seconds for the whole call (the planner keeps what fits; see ``budget`` in the
    docs); ``preset``: ``fast`` | ``medium`` | ``best``, the strategies tried.
    """
    import time

    from transfuse.distributed import wait_for_rank0
    from transfuse.pipeline import run_experiment

    started = time.time()

    if out is None:
        _check_one_run_folder(strategies, config, preset)
        out = Path("runs") / f"fit-{dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    cfg = build_config(data, labels, out=out, modality=modality, backbones=backbones, strategies=strategies,
                       folds=folds, test_data=test_data, test_labels=test_labels, image_size=image_size,
                       image_shape=image_shape, column=column, label=label, seed=seed, config=config,
                       time_limit=time_limit, preset=preset)
    run_experiment(cfg, cfg.output.dir, progress=progress, overwrite=overwrite, started=started)
    if ddp_follower(config) is not None:  # the caller's script goes on as on rank 0, with rank 0's run
        wait_for_rank0(Path(cfg.output.dir) / "report.json", f"the end of the run {cfg.output.dir}")
    return Run(cfg.output.dir)
