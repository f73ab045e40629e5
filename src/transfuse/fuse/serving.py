"""Save and rebuild fused models: what ``transfuse predict`` runs when ``model.json`` says
``"kind": "fusion"``.

A fused model's folder holds ``model.json`` (method, members, JSON parameters) and, where the
fusion has tensors, ``fusion.safetensors`` (no pickle anywhere). Prediction-level fusions
(``mean``/``weighted``/``greedy``/``stacking``) name their members' candidate folders relative to
the run folder (``candidates/<name>``); each member is rebuilt from its own ``model.json`` the way
:mod:`transfuse.export.predict` rebuilds a single candidate. A feature fusion names its backbones
(spec, options, weights hash) and stores the fusion head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transfuse.errors import UserError
from transfuse.io import atomic_write_json, read_json

FUSION_FILE = "fusion.safetensors"


def run_root(folder: Path) -> Path:
    """The run folder holding ``folder`` (the nearest parent with ``config.yaml``)."""
    for p in [folder, *folder.parents]:
        if (p / "config.yaml").is_file():
            return p
    raise UserError(f"{str(folder)!r} is not inside a transfuse run folder (no config.yaml above it); "
                    "keep the fused model inside its run folder: its members live there")


def _save_tensors(folder: Path, tensors: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FUSION_FILE}.tmp"
    save_file({k: torch.as_tensor(np.asarray(v)).contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(folder / FUSION_FILE)


def _load_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    f = folder / FUSION_FILE
    if not f.is_file():
        raise UserError(f"{str(f)!r} is missing; rerun the fusion ('transfuse resume')")
    return load_file(str(f))


# ------------------------------------------------------------------------------------- saving

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


def save_ensemble(folder: Path, method: str, est: Any, members: list[str], member_folders: list[str],
                  classes: list[str], modality: str) -> None:
    params, tensors = ensemble_state(method, est)
    if tensors:
        _save_tensors(folder, tensors)
    atomic_write_json(folder / "model.json", {
        "kind": "fusion", "method": method, "modality": modality, "classes": classes,
        "members": [{"name": n, "folder": f} for n, f in zip(members, member_folders, strict=True)],
        "params": params, "files": {"fusion": FUSION_FILE} if tensors else {}})


def save_feature_fusion(folder: Path, est: Any, backbones: list[dict[str, Any]], classes: list[str],
                        modality: str) -> None:
    """``backbones``: ``{"name", "spec", "options", "weights_hash", "modality"}`` per block, in
    ``est.block_names_`` order."""
    tensors = {f"net.{k}": v.detach().cpu().numpy() for k, v in est.net_.state_dict().items()}
    for i, (m, s) in enumerate(zip(est.means_, est.scales_, strict=True)):
        tensors[f"mean.{i}"], tensors[f"scale.{i}"] = np.asarray(m), np.asarray(s)
    _save_tensors(folder, tensors)
    params = {k: v for k, v in est.get_params().items() if k != "device"}
    atomic_write_json(folder / "model.json", {
        "kind": "fusion", "method": "features", "modality": modality, "classes": classes,
        "members": backbones, "params": params, "block_names": list(est.block_names_),
        "block_dims": [int(d) for d in est.block_dims_], "files": {"fusion": FUSION_FILE}})


# ------------------------------------------------------------------------------------ loading

def load_single(folder: Path, info: dict[str, Any] | None = None) -> Any:
    """A single candidate (``model.json`` + ``head.safetensors`` or ``model.safetensors``) as an
    eval-mode :class:`~transfuse.train.finetune.Classifier`."""
    from safetensors.torch import load_file
    from safetensors.torch import load_model as st_load_model

    from transfuse.backbones.registry import create_backbone
    from transfuse.train.finetune import Classifier, head_module

    if info is None:
        if not (folder / "model.json").is_file():
            raise UserError(f"fusion member {str(folder)!r} has no model.json; it cannot be rebuilt "
                            "(raw-estimator baselines are not saved); refit without it")
        info = read_json(folder / "model.json")
    b = info["backbone"]
    backbone = create_backbone(b["name"], **b.get("options", {}))
    model = Classifier(backbone, len(info["classes"]))
    if "head" in info["files"]:
        if backbone.weights_hash() != info["weights_hash"]:
            raise UserError(f"backbone {b['name']!r} now has different weights than when {str(folder)!r} "
                            "was trained; reinstall the version it used")
        model.head = head_module(load_file(str(folder / info["files"]["head"])))
    else:
        st_load_model(model, str(folder / info["files"]["model"]))
    return model.eval()


def _view(dataset: Any, modality: str) -> Any:
    from transfuse.data.multimodal import dataset_for

    return dataset_for(dataset, modality)


class EnsembleModel:
    """Members' probabilities combined by a mean, weights or a stacking meta-learner."""

    def __init__(self, method: str, members: list[Any], params: dict[str, Any],
                 tensors: dict[str, np.ndarray]):
        self.method, self.members, self.params, self.tensors = method, members, params, tensors

    def combine(self, P: np.ndarray) -> np.ndarray:
        """``(m, n, C)`` member probabilities -> ``(n, C)``."""
        if self.method == "mean":
            return P.mean(axis=0)
        if self.method in ("weighted", "greedy"):
            return np.tensordot(np.asarray(self.params["weights"]), P, axes=1)
        X = np.log(np.clip(P, 1e-12, None)) if self.params["features"] == "log" else P
        X = np.concatenate(list(X), axis=1)
        if "scaler_mean" in self.tensors:
            X = (X - self.tensors["scaler_mean"]) / self.tensors["scaler_scale"]
        z = X @ self.tensors["coef"].T + self.tensors["intercept"]
        if z.shape[1] == 1:  # binary logistic regression
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            q = np.stack([1 - p1, p1], axis=1)
        else:
            q = np.exp(z - z.max(axis=1, keepdims=True))
            q /= q.sum(axis=1, keepdims=True)
        out = np.zeros(P.shape[1:])
        out[:, self.params["meta_classes"]] = q
        return out

    def member_probas(self, dataset: Any, batch_size: int = 32) -> np.ndarray:
        return np.stack([m.predict_proba(_view(dataset, m.backbone.modality), batch_size=batch_size)
                         for m in self.members]).astype(np.float64)

    def predict_proba(self, dataset: Any, batch_size: int = 32) -> np.ndarray:
        return self.combine(self.member_probas(dataset, batch_size))


class FeatureFusionModel:
    """Frozen backbones -> features per block -> the fitted :class:`FeatureFusionClassifier`."""

    def __init__(self, backbones: list[Any], est: Any):
        self.backbones, self.est = backbones, est

    def predict_proba(self, dataset: Any, batch_size: int = 32) -> np.ndarray:
        from transfuse.train.cache import compute_features

        blocks = {name: compute_features(b, _view(dataset, b.modality), batch_size)
                  for name, b in zip(self.est.block_names_, self.backbones, strict=True)}
        return self.est.predict_proba(blocks)


def _feature_fusion(folder: Path, info: dict[str, Any]) -> FeatureFusionModel:
    import torch

    from transfuse.backbones.registry import create_backbone
    from transfuse.fuse.features import FeatureFusionClassifier, _FusionNet

    t = _load_tensors(folder)
    backbones = []
    for m in info["members"]:
        b = create_backbone(m["spec"], **m.get("options", {}))
        if b.weights_hash() != m["weights_hash"]:
            raise UserError(f"backbone {m['spec']!r} now has different weights than when {str(folder)!r} "
                            "was trained; reinstall the version it used")
        backbones.append(b.eval())
    est = FeatureFusionClassifier(**info["params"])
    n = len(info["block_names"])
    est.block_names_, est.block_dims_ = list(info["block_names"]), list(info["block_dims"])
    est.classes_ = np.arange(len(info["classes"]))
    est.means_ = [t[f"mean.{i}"] for i in range(n)]
    est.scales_ = [t[f"scale.{i}"] for i in range(n)]
    net = _FusionNet(est.block_dims_, est.config, len(info["classes"])).to(est._dtype())
    net.load_state_dict({k[4:]: torch.from_numpy(v.copy()) for k, v in t.items() if k.startswith("net.")})
    est.net_ = net.eval()
    return FeatureFusionModel(backbones, est)


def load_fused_model(folder: str | Path, info: dict[str, Any]) -> Any:
    """Rebuild a fused model from its folder; the result offers ``predict_proba(dataset, batch_size)``."""
    folder = Path(folder)
    method = info.get("method")
    if method == "features":
        return _feature_fusion(folder, info)
    if method == "joint":
        from transfuse.fuse.joint import load_joint

        return load_joint(folder, info)
    if method not in ("mean", "weighted", "greedy", "stacking"):
        raise UserError(f"{str(folder / 'model.json')!r}: unknown fusion method {method!r}; valid: "
                        "mean, weighted, greedy, stacking, features, joint")
    root = run_root(folder)
    members = [load_single(root / m["folder"]) for m in info["members"]]
    tensors = _load_tensors(folder) if info.get("files", {}).get("fusion") else {}
    return EnsembleModel(method, members, info.get("params", {}), tensors)
