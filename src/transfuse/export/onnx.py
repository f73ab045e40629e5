"""Export a run's chosen model to ONNX, with the temperature folded in and a parity check.

The graph takes the *collated* tensors a backbone's ``make_transform`` + ``collate`` produce
(images: ``input`` (B, 3, H, W); audio: ``input`` (B, ...) features; text: ``input_ids`` and
``attention_mask`` (B, T)) and returns calibrated probabilities ``proba`` (B, C) =
softmax(logits / T). Batch (and text length) are dynamic. Parity: the ONNX probabilities on real
inputs of the run must match torch's within ``tolerance`` (max abs difference), or the export
fails and leaves no model behind.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.errors import UserError
from transfuse.io import atomic_write_json, read_json

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
META_FILE = "onnx.json"
INT8_MAX_DROP = 0.01  # accuracy an int8 model may lose before the export warns


class ExportError(UserError):
    """The exported graph does not reproduce the torch model (parity above tolerance)."""


def _proba_module(model: Any, temperature: float, names: list[str]) -> Any:
    import torch

    class ProbaModule(torch.nn.Module):
        """Collated tensors -> softmax(logits / T)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x0: torch.Tensor, x1: torch.Tensor | None = None, x2: torch.Tensor | None = None,
                    x3: torch.Tensor | None = None) -> torch.Tensor:
            inputs = (x0, x1, x2, x3)[: len(names)]
            batch = dict(zip(names, inputs)) if names != ["input"] else x0
            return torch.softmax(self.model(batch).float() / temperature, dim=-1)

    return ProbaModule().eval()


def input_names(batch: Any) -> list[str]:
    """Names of the graph inputs for a collated batch: its keys, or ``input`` for one tensor."""
    import torch

    if isinstance(batch, dict):
        return list(batch)
    if isinstance(batch, torch.Tensor):
        return ["input"]
    raise UserError(f"export: backbone batches of type {type(batch).__name__} are not supported; "
                    "export needs a tensor or a dict of tensors")


def as_tensors(batch: Any, names: list[str]) -> tuple:
    return tuple(batch[n] for n in names) if isinstance(batch, dict) else (batch,)


def collate_examples(backbone: Any, dataset: Any, indices: Any) -> Any:
    """Decoded, transformed (eval) and collated inputs, exactly as the torch path feeds them."""
    tf = backbone.make_transform(train=False)
    return backbone.collate([tf(dataset.load(int(i))) for i in indices])


def run_datasets(run_dir: Path) -> tuple[Any, Any]:
    """The run's training and test parts (rebuilt from its saved config and splits)."""
    from transfuse.config import load_config
    from transfuse.run import CONFIG_FILE, prepare_data

    cfg = load_config(run_dir / CONFIG_FILE)
    data = prepare_data(cfg, run_dir)
    return data.train, data.test


def export_onnx(model: Any, example: Any, path: Path, temperature: float = 1.0, opset: int = 18) -> list[str]:
    """Write ``model`` (collated batch -> logits) as an ONNX graph returning probabilities."""
    import torch

    names = input_names(example)
    if len(names) > 4:
        raise UserError(f"export: batches with {len(names)} tensors are not supported (at most 4)")
    args = as_tensors(example, names)
    dyn = tuple({0: "batch", 1: "seq"} if names != ["input"] else {0: "batch"} for _ in args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_proba_module(model, temperature, names), args, str(tmp), dynamo=True,
                              input_names=names, output_names=["proba"], dynamic_shapes=dyn,
                              opset_version=opset, verbose=False, external_data=False)
    except Exception as e:  # noqa: BLE001 -- torch.export cannot trace this backbone (e.g. it calls onnxruntime)
        tmp.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        spec = getattr(getattr(model, "backbone", None), "spec", type(model).__name__)
        raise ExportError(f"export: torch.onnx.export cannot trace backbone {spec!r} ({type(e).__name__}: "
                          f"{first}); use --engine torch for this model") from None
    tmp.replace(path)
    return names


def session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_proba(sess: Any, batch: Any, names: list[str]) -> np.ndarray:
    feeds = {n: np.ascontiguousarray(t.numpy()) for n, t in zip(names, as_tensors(batch, names))}
    return sess.run(["proba"], feeds)[0]


def batched_proba(sess: Any, backbone: Any, dataset: Any, names: list[str], batch_size: int = 32) -> np.ndarray:
    """ONNX probabilities over a whole dataset, in order."""
    out = [onnx_proba(sess, collate_examples(backbone, dataset, range(i, min(i + batch_size, len(dataset)))), names)
           for i in range(0, len(dataset), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def export_run(run_dir: str | Path, int8: bool = False, tolerance: float = 1e-4, opset: int = 18,
               parity_samples: int = 32) -> dict[str, Any]:
    """``transfuse export RUN_DIR --format onnx [--int8]``: write ``model/model.onnx`` (and
    ``model.int8.onnx``) and ``model/onnx.json``; returns the export report (parity, sizes,
    accuracies)."""
    import torch

    from transfuse.export.predict import load_model

    run_dir = Path(run_dir)
    model, info = load_model(run_dir)
    if info.get("kind") == "fusion":
        raise UserError(f"{str(run_dir)!r}: its chosen model is a fusion of several models, which "
                        "export does not yet write as one graph; export a single-model run instead")
    folder = run_dir / "model"
    temperature = float(info.get("temperature", 1.0))
    train, test = run_datasets(run_dir)
    ref = test if len(test) else train
    idx = np.arange(min(parity_samples, len(ref)))
    example = collate_examples(model.backbone, ref, idx)
    t0 = time.perf_counter()
    names = export_onnx(model, example, folder / ONNX_FILE, temperature, opset)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        p_torch = _proba_module(model, temperature, names)(*as_tensors(example, names)).numpy()
    p_onnx = onnx_proba(session(folder / ONNX_FILE), example, names)
    diff = float(np.abs(p_onnx - p_torch).max())
    if not diff <= tolerance:
        (folder / ONNX_FILE).unlink(missing_ok=True)
        raise ExportError(f"export: ONNX probabilities differ from torch by {diff:.2e} on {len(idx)} real "
                          f"inputs (tolerance {tolerance:g}); raise export.tolerance or report the backbone")
    out: dict[str, Any] = {"format": "onnx", "file": ONNX_FILE, "inputs": names, "opset": opset,
                           "temperature": temperature, "parity_max_abs_diff": diff, "parity_samples": len(idx),
                           "tolerance": tolerance, "export_seconds": seconds,
                           "size_bytes": (folder / ONNX_FILE).stat().st_size}
    if int8:
        from transfuse.export.quantize import quantize_int8

        quantize_int8(folder / ONNX_FILE, folder / INT8_FILE)
        out["int8"] = {"file": INT8_FILE, "size_bytes": (folder / INT8_FILE).stat().st_size}
        if len(test):
            y = test.labels
            for key, f in (("fp32", ONNX_FILE), ("int8", INT8_FILE)):
                p = batched_proba(session(folder / f), model.backbone, test, names)
                out.setdefault("test_accuracy", {})[key] = float((p.argmax(1) == y).mean())
            drop = out["test_accuracy"]["fp32"] - out["test_accuracy"]["int8"]
            out["int8"]["accuracy_drop"] = drop
            if drop > INT8_MAX_DROP:
                out["int8"]["warning"] = (f"int8 loses {100 * drop:.1f} points of test accuracy; "
                                          f"ship {ONNX_FILE} (fp32) instead")
    atomic_write_json(folder / META_FILE, out)
    return out


def read_meta(run_dir: str | Path) -> dict[str, Any] | None:
    p = Path(run_dir) / "model" / META_FILE
    return read_json(p) if p.exists() and (p.parent / ONNX_FILE).exists() else None


def export_cli(run_dir: str | Path, format: str = "onnx", int8: bool = False) -> dict[str, Any]:
    """``transfuse export RUN_DIR --format onnx [--int8]`` (settings from the run's export: section)."""
    if format != "onnx":
        raise UserError(f"--format {format!r} is not supported; valid formats: onnx")
    run_dir = Path(run_dir)
    if not (run_dir / "model" / "model.json").exists():
        raise UserError(f"{str(run_dir)!r} has no chosen model (model/model.json); give a finished run "
                        "folder, or finish this one with 'transfuse resume'")
    tol, opset, n = 1e-4, 18, 32
    if (run_dir / "config.yaml").exists():
        from transfuse.config import load_config

        e = load_config(run_dir / "config.yaml").export
        tol, opset, n = e.tolerance, e.opset, e.parity_samples
    return export_run(run_dir, int8=int8, tolerance=tol, opset=opset, parity_samples=n)
