"""Each candidate kind's files: safetensors beside one ``model.json`` (written by :mod:`.spec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transfuse.artifacts.spec import BackboneRef, ModelSpec, load_spec, save_spec
from transfuse.errors import UserError
from transfuse.io import atomic_write_bytes

HEAD_FILE, MODEL_FILE, FUSION_FILE, ESTIMATOR_FILE = ("head.safetensors", "model.safetensors",
                                                      "fusion.safetensors", "estimator.safetensors")


def write_tensors(path: Path, tensors: dict[str, Any]) -> None:
    """Arrays or torch tensors as one safetensors file, atomically (copies break any sharing)."""
    import torch
    from safetensors.torch import save

    out = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))).clone()
           .contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(out))


def backbone_ref(name: str, options: dict[str, Any], backbone: Any, block: str | None = None) -> BackboneRef:
    return BackboneRef(name=name, options=dict(options), weights_hash=backbone.weights_hash(),
                       modality=backbone.modality, feature_dim=getattr(backbone, "feature_dim", None),
                       block=block)


def head_tensors(head: Any) -> dict[str, Any]:
    """A fitted head: linear in raw feature space (``weight``, ``bias``: standardisation folded in),
    or an MLP as its standardiser (``mean``, ``scale``) and net (``net.*``);
    :func:`transfuse.train.finetune.head_module` rebuilds either."""
    if head.kind == "linear":
        W, b = head.to_linear()
        return {"weight": np.asarray(W, np.float32), "bias": np.asarray(b, np.float32)}
    return {"mean": np.asarray(head.mean_, np.float32), "scale": np.asarray(head.scale_, np.float32),
            **{f"net.{k}": v.float() for k, v in head.net_.state_dict().items()}}


def save_probe(folder: Path, spec: ModelSpec, head: Any) -> None:
    write_tensors(folder / HEAD_FILE, head_tensors(head))
    save_spec(folder, spec.model_copy(update={"kind": "probe", "files": {"head": HEAD_FILE}}))


def save_network(folder: Path, spec: ModelSpec, module: Any) -> None:
    """A whole network (fine-tuned backbone + head): its state dict."""
    write_tensors(folder / MODEL_FILE, module.state_dict())
    save_spec(folder, spec.model_copy(update={"files": {"model": MODEL_FILE}}))


def save_bag(folder: Path, spec: ModelSpec, networks: list[Any]) -> None:
    """A fold bag (:class:`~transfuse.train.bag.FoldBag`): each fold network's state dict in its
    own file, so the folder serves without the run's ``work/``."""
    files = {}
    for k, net in enumerate(networks):
        files[f"fold{k}"] = f"fold{k}.safetensors"
        write_tensors(folder / files[f"fold{k}"], net.state_dict())
    save_spec(folder, spec.model_copy(update={"kind": "bag", "method": "mean", "files": files,
                                              "params": {"folds": len(networks)}}))


def save_raw(folder: Path, spec: ModelSpec, estimator: Any) -> None:
    """A raw-input estimator that can state itself as JSON + arrays (``to_state``)."""
    if not hasattr(estimator, "to_state"):
        raise UserError(f"candidate {spec.candidate!r}: {type(estimator).__name__} cannot be saved without "
                        "pickle, so it cannot be served")
    params, arrays = estimator.to_state()
    write_tensors(folder / ESTIMATOR_FILE, arrays)
    save_spec(folder, spec.model_copy(update={"kind": "raw", "params": params,
                                              "files": {"estimator": ESTIMATOR_FILE}}))


def ensemble_state(method: str, est: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """JSON parameters and tensors that rebuild a fitted prediction-level ensemble."""
    if method in ("weighted", "greedy"):
        return {"weights": [float(w) for w in est.weights_]}, {}
    if method == "mean":
        return {}, {}
    if method == "stacking":
        meta = est.meta_
        steps = getattr(meta, "steps", None)
        lr = steps[-1][1] if steps else meta
        tensors = {"coef": lr.coef_.astype(np.float64), "intercept": lr.intercept_.astype(np.float64)}
        if steps:
            tensors.update(scaler_mean=steps[0][1].mean_.astype(np.float64),
                           scaler_scale=steps[0][1].scale_.astype(np.float64))
        return {"features": est.features, "meta_classes": [int(c) for c in lr.classes_],
                "n_members": int(est.n_members_)}, tensors
    raise UserError(f"cannot save fusion method {method!r}; valid: mean, weighted, greedy, stacking")


def save_ensemble(folder: Path, spec: ModelSpec, est: Any) -> None:
    params, tensors = ensemble_state(spec.method or "", est)
    if tensors:
        write_tensors(folder / FUSION_FILE, tensors)
    save_spec(folder, spec.model_copy(update={"kind": "ensemble", "params": params,
                                              "files": {"fusion": FUSION_FILE} if tensors else {}}))


def save_features(folder: Path, spec: ModelSpec, est: Any) -> None:
    """A feature-fusion head (:class:`~transfuse.fuse.features.FeatureFusionClassifier`); the
    spec's ``backbones`` are in ``est.block_names_`` order."""
    tensors: dict[str, Any] = {f"net.{k}": v for k, v in est.net_.state_dict().items()}
    for i, (m, s) in enumerate(zip(est.means_, est.scales_, strict=True)):
        tensors[f"mean.{i}"], tensors[f"scale.{i}"] = np.asarray(m), np.asarray(s)
    write_tensors(folder / FUSION_FILE, tensors)
    params = {k: v for k, v in est.get_params().items() if k != "device"}
    save_spec(folder, spec.model_copy(update={
        "kind": "features", "method": "features", "files": {"fusion": FUSION_FILE},
        "params": {**params, "block_dims": [int(d) for d in est.block_dims_]}}))


def save_joint(folder: Path, spec: ModelSpec, net: Any, hidden: int, dropout: float) -> None:
    write_tensors(folder / MODEL_FILE, net.state_dict())
    save_spec(folder, spec.model_copy(update={"kind": "joint", "method": "joint", "files": {"model": MODEL_FILE},
                                              "params": {"hidden": hidden, "dropout": dropout}}))


def set_temperature(folder: Path, temperature: float | None) -> None:
    """Record the calibration temperature that serving applies."""
    save_spec(folder, load_spec(folder).model_copy(update={"temperature": temperature}))
