"""Load any saved model (any :class:`~transfuse.artifacts.spec.ModelSpec` kind) and predict.

Every loaded model offers ``predict_proba(dataset, batch_size)`` and ``modality``; the spec's
calibration temperature is applied by :func:`predict_proba`. Ensemble members are the run's own
candidates (``candidates/<name>`` of the run folder holding the model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transfuse.adapt.result import safe_name
from transfuse.artifacts.spec import BackboneRef, ModelSpec, load_spec
from transfuse.errors import UserError

RUN_MARKER = "config.yaml"


def run_root(folder: Path) -> Path:
    """The run folder holding ``folder`` (the nearest parent with ``config.yaml``)."""
    for p in [folder, *folder.parents]:
        if (p / RUN_MARKER).is_file():
            return p
    raise UserError(f"{str(folder)!r} is not inside a transfuse run folder (no {RUN_MARKER} above it); "
                    "keep a fused model inside its run folder: its members live there")


def view(dataset: Any, modality: str) -> Any:
    """A multimodal dataset's column of ``modality`` (other datasets as they are). A model over
    several modalities (a feature fusion or ensemble of a multimodal run) gets the whole dataset:
    each of its backbones or members reads its own column."""
    from transfuse.data.multimodal import MULTIMODAL, dataset_for

    return dataset if modality == MULTIMODAL else dataset_for(dataset, modality)


def _tensors(folder: Path, spec: ModelSpec, key: str, lib: str = "torch") -> dict[str, Any]:
    """The tensors of the spec's file ``key`` (torch or numpy arrays); a missing or damaged file is
    a one-line error (the header is checked before a byte is read)."""
    from transfuse.tensorfile import check_safetensors

    f = folder / spec.files.get(key, "")
    if key not in spec.files or not f.is_file():
        raise UserError(f"{str(f)!r} is missing; rerun the candidate ('transfuse resume' after "
                        "deleting its folder) or restore the file")
    check_safetensors(f)
    if lib == "numpy":
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    return load_file(str(f))


def _backbone(ref: BackboneRef, folder: Path, check: bool = True) -> Any:
    from transfuse.backbones.registry import create_backbone

    b = create_backbone(ref.name, **ref.options)
    if check and ref.weights_hash is not None and b.weights_hash() != ref.weights_hash:
        raise UserError(f"backbone {ref.name!r} now has different weights than when {str(folder)!r} was "
                        "trained; reinstall the version it used")
    return b.eval()


def _single(folder: Path, spec: ModelSpec) -> Any:
    from transfuse.train.finetune import Classifier, head_module

    if spec.kind == "probe":
        model = Classifier(_backbone(spec.backbone, folder), len(spec.classes))
        model.head = head_module(_tensors(folder, spec, "head"))
    else:
        model = Classifier(_backbone(spec.backbone, folder, check=False), len(spec.classes))
        model.load_state_dict(_tensors(folder, spec, "model"), strict=True)
    model.modality, model.backbone_options = spec.modality, spec.backbone.options
    return model.eval()


def _bag(folder: Path, spec: ModelSpec) -> Any:
    import copy

    from transfuse.train.bag import FoldBag
    from transfuse.train.finetune import Classifier

    backbone = _backbone(spec.backbone, folder, check=False)  # built once: the folds' weights replace its own
    nets = []
    for k in range(int(spec.params.get("folds", len(spec.files)))):
        net = Classifier(copy.deepcopy(backbone), len(spec.classes))
        net.load_state_dict(_tensors(folder, spec, f"fold{k}"), strict=True)
        nets.append(net)
    model = FoldBag(nets)
    model.modality, model.backbone_options = spec.modality, spec.backbone.options
    return model.eval()


class RawModel:
    """A raw-input estimator (e.g. TF-IDF) over decoded items."""

    def __init__(self, estimator: Any, modality: str, n_classes: int):
        self.estimator, self.modality, self.n_classes = estimator, modality, n_classes

    def predict_proba(self, dataset: Any, batch_size: int = 32) -> np.ndarray:
        from transfuse.adapt.raw import full_proba

        ds = view(dataset, self.modality)
        return full_proba(self.estimator, [ds.load(i) for i in range(len(ds))], self.n_classes)


def _raw(folder: Path, spec: ModelSpec) -> RawModel:
    from transfuse.backbones.registry import create_backbone

    est = create_backbone(spec.estimator["name"], **spec.estimator.get("options", {}))
    arrays = _tensors(folder, spec, "estimator", lib="numpy")
    return RawModel(type(est).from_state(spec.params, arrays), spec.modality, len(spec.classes))


class EnsembleModel:
    """Members' probabilities combined by a mean, weights or a stacking meta-learner."""

    def __init__(self, method: str, members: list[Any], params: dict[str, Any], tensors: dict[str, np.ndarray],
                 modality: str):
        self.method, self.members, self.params, self.tensors = method, members, params, tensors
        self.modality = modality

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
        return np.stack([m.predict_proba(view(dataset, m.modality), batch_size=batch_size)
                         for m in self.members]).astype(np.float64)

    def predict_proba(self, dataset: Any, batch_size: int = 32) -> np.ndarray:
        return self.combine(self.member_probas(dataset, batch_size))


def _ensemble(folder: Path, spec: ModelSpec) -> EnsembleModel:
    root = run_root(folder)
    members = [load_model(root / "candidates" / safe_name(m))[0] for m in spec.members]
    tensors = _tensors(folder, spec, "fusion", lib="numpy") if "fusion" in spec.files else {}
    return EnsembleModel(spec.method or "", members, spec.params, tensors, spec.modality)


class FeatureFusionModel:
    """Frozen backbones -> features per block -> the fitted feature-fusion head."""

    def __init__(self, backbones: list[Any], est: Any, modality: str):
        self.backbones, self.est, self.modality = backbones, est, modality

    def predict_proba(self, dataset: Any, batch_size: int = 32) -> np.ndarray:
        from transfuse.train.cache import compute_features

        blocks = {name: compute_features(b, view(dataset, b.modality), batch_size)
                  for name, b in zip(self.est.block_names_, self.backbones, strict=True)}
        return self.est.predict_proba(blocks)


def _features(folder: Path, spec: ModelSpec) -> FeatureFusionModel:
    from transfuse.fuse.features import FeatureFusionClassifier, _FusionNet

    t = _tensors(folder, spec, "fusion")
    params = dict(spec.params)
    dims = params.pop("block_dims")
    est = FeatureFusionClassifier(**params)
    est.block_names_, est.block_dims_ = [b.block for b in spec.backbones], list(dims)
    est.classes_ = np.arange(len(spec.classes))
    est.means_ = [t[f"mean.{i}"].numpy() for i in range(len(dims))]
    est.scales_ = [t[f"scale.{i}"].numpy() for i in range(len(dims))]
    net = _FusionNet(est.block_dims_, est.config, len(spec.classes)).to(est._dtype())
    net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
    est.net_ = net.eval()
    return FeatureFusionModel([_backbone(b, folder) for b in spec.backbones], est, spec.modality)


class JointModel:
    """Several backbones fine-tuned under one late-fusion head."""

    def __init__(self, net: Any, modality: str):
        self.net, self.modality = net, modality

    def predict_proba(self, dataset: Any, batch_size: int = 32) -> np.ndarray:
        from transfuse.fuse.joint import predict_joint

        return predict_joint(self.net, dataset, batch_size)


def _joint(folder: Path, spec: ModelSpec) -> JointModel:
    from transfuse.fuse.joint import JointFusionNet

    bbs = {b.block: _backbone(b, folder, check=False) for b in spec.backbones}
    net = JointFusionNet(bbs, len(spec.classes), spec.params["hidden"], spec.params["dropout"])
    net.load_state_dict(_tensors(folder, spec, "model"), strict=True)
    return JointModel(net.eval(), spec.modality)


LOADERS = {"probe": _single, "finetune": _single, "bag": _bag, "raw": _raw, "ensemble": _ensemble,
           "features": _features, "joint": _joint}


def load_model(folder: str | Path) -> tuple[Any, ModelSpec]:
    """The model saved in ``folder`` (a run's ``model/`` or ``candidates/NAME``) and its spec."""
    folder = Path(folder)
    spec = load_spec(folder)
    return LOADERS[spec.kind](folder, spec), spec


def predict_proba(model: Any, spec: ModelSpec, dataset: Any, batch_size: int = 32) -> np.ndarray:
    """Calibrated probabilities (the spec's temperature applied)."""
    from transfuse.evaluate.calibration import apply_temperature

    p = np.asarray(model.predict_proba(view(dataset, model.modality), batch_size=batch_size))
    return apply_temperature(p, spec.temperature).astype(np.float32) if spec.temperature is not None else p
