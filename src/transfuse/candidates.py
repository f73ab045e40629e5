"""Candidates: one (backbone x adaptation strategy) each, scored by k-fold CV.

Every runner returns a :class:`CandidateResult` holding out-of-fold probabilities (the fusion
methods need them), test probabilities (for the report; selection uses CV only), per-fold scores
and the learning curves. Results are saved per candidate so an interrupted run resumes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.config import ExperimentConfig
from transfuse.data.base import Dataset
from transfuse.io import atomic_save_npz, atomic_write_json, read_json


@dataclass
class CandidateResult:
    name: str
    kind: str  # "single" | "baseline" | "fusion"
    oof: np.ndarray  # (n_train, C) out-of-fold probabilities
    test: np.ndarray  # (n_test, C)
    cv_scores: list[float]
    backbone: str | None = None
    strategy: str | None = None
    method: str | None = None
    members: list[str] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    fit_seconds: float = 0.0
    params: int | None = None
    inference_ms_per_example: float | None = None

    @property
    def cv_mean(self) -> float:
        return float(np.mean(self.cv_scores))

    @property
    def cv_std(self) -> float:
        return float(np.std(self.cv_scores))

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "backbone": self.backbone,
            "strategy": self.strategy, "method": self.method, "members": self.members,
            "cv_mean": self.cv_mean, "cv_std": self.cv_std, "cv_scores": self.cv_scores,
            "history": self.history, "fit_seconds": self.fit_seconds, "params": self.params,
            "inference_ms_per_example": self.inference_ms_per_example,
        }

    def save(self, folder: Path) -> None:
        atomic_save_npz(folder / "proba.npz", oof=self.oof, test=self.test)
        atomic_write_json(folder / "result.json", self.summary())  # written last: marks done

    @classmethod
    def load(cls, folder: Path) -> CandidateResult | None:
        if not (folder / "result.json").exists() or not (folder / "proba.npz").exists():
            return None
        s = read_json(folder / "result.json")
        with np.load(folder / "proba.npz", allow_pickle=False) as z:
            oof, test = z["oof"], z["test"]
        keys = ("name", "kind", "cv_scores", "backbone", "strategy", "method", "members",
                "history", "fit_seconds", "params", "inference_ms_per_example")
        return cls(oof=oof, test=test, **{k: s.get(k) for k in keys})


def score(y: np.ndarray, proba: np.ndarray, metric: str) -> float:
    pred = proba.argmax(1)
    if metric == "macro_f1":
        from sklearn.metrics import f1_score

        return float(f1_score(y, pred, average="macro", labels=np.arange(proba.shape[1]), zero_division=0))
    return float((pred == y).mean())


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def head_from_config(cfg: ExperimentConfig, n_classes: int, seed: int):
    from transfuse.train.heads import HeadClassifier

    return HeadClassifier.from_config(cfg.train.head.model_copy(update={"seed": seed}),
                                      n_classes=n_classes)


def n_params(module: Any) -> int | None:
    try:
        return int(sum(p.numel() for p in module.parameters()))
    except AttributeError:
        return None


# ----------------------------------------------------------------------------- runners

def run_linear_probe(name: str, backbone: Any, feats_train: np.ndarray, feats_test: np.ndarray,
                     y: np.ndarray, folds: list, n_classes: int, cfg: ExperimentConfig,
                     folder: Path) -> CandidateResult:
    """Head on cached features: k fold fits for OOF, one fit on all training data for test."""
    t0 = time.perf_counter()
    oof = np.zeros((len(y), n_classes), np.float32)
    scores = []
    for k, (tr, va) in enumerate(folds):
        head = head_from_config(cfg, n_classes, cfg.seed + k).fit(feats_train[tr], y[tr])
        oof[va] = head.predict_proba(feats_train[va])
        scores.append(score(y[va], oof[va], cfg.evaluate.metric))
    head = head_from_config(cfg, n_classes, cfg.seed).fit(feats_train, y)
    test = head.predict_proba(feats_test) if len(feats_test) else np.zeros((0, n_classes), np.float32)
    save_head(folder, head)
    return CandidateResult(name=name, kind="single", oof=oof, test=np.asarray(test, np.float32),
                           cv_scores=scores, backbone=backbone.spec, strategy="linear_probe",
                           fit_seconds=time.perf_counter() - t0,
                           params=(n_params(backbone) or 0) + feats_train.shape[1] * n_classes + n_classes)


def save_head(folder: Path, head: Any) -> None:
    """Save a fitted head as ``head.safetensors``: a linear head in raw feature space (``weight``,
    ``bias``: standardisation folded in), an MLP head as its standardiser (``mean``, ``scale``) and
    net (``net.*``); :func:`transfuse.train.finetune.head_module` rebuilds either."""
    import torch
    from safetensors.torch import save_file

    if head.kind == "linear":
        W, b = head.to_linear()
        tensors = {"weight": W, "bias": b}
    else:
        tensors = {"mean": head.mean_, "scale": head.scale_,
                   **{f"net.{k}": v.detach().cpu().numpy() for k, v in head.net_.state_dict().items()}}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".head.safetensors.tmp"
    save_file({k: torch.as_tensor(np.asarray(v), dtype=torch.float32).contiguous() for k, v in tensors.items()},
              str(tmp))
    tmp.replace(folder / "head.safetensors")


def run_finetune(name: str, strategy: str, backbone: Any, train: Dataset, test: Dataset,
                 feats_train: np.ndarray | None, folds: list, n_classes: int,
                 cfg: ExperimentConfig, folder: Path, progress: bool) -> CandidateResult:
    """Fine-tune per fold (OOF), then refit on all training data for the median best epoch count.

    ``lp_ft`` first fits a probe on the fold's cached features and starts from that head
    (Kumar et al. 2022, https://arxiv.org/abs/2202.10054)."""
    from transfuse.train.finetune import finetune

    t0 = time.perf_counter()
    y = train.labels
    ft = cfg.train.finetune
    if ft.head_lr == "auto":
        # LP-FT's head is already trained: a 10x head lr (right for a fresh head) undoes it in the
        # first epoch (emoji fold 0 at 224 px: 0.74 -> 0.69), so head and backbone move together
        ft = ft.model_copy(update={"head_lr": ft.resolved_head_lr(head_trained=strategy == "lp_ft")})
    aug = getattr(cfg.augment, train.modality, None)
    oof = np.zeros((len(y), n_classes), np.float32)
    scores, history, best_epochs = [], [], []
    for k, (tr, va) in enumerate(folds):
        init = None
        if strategy == "lp_ft":
            init = head_from_config(cfg, n_classes, cfg.seed + k).fit(feats_train[tr], y[tr]).to_linear()
        res = finetune(copy.deepcopy(backbone), train.subset(tr), train.subset(va), n_classes, ft,
                       folder / f"fold{k}", head_init=init, augment=aug, seed=cfg.seed + k,
                       progress=progress)
        oof[va] = res.val_proba
        scores.append(score(y[va], oof[va], cfg.evaluate.metric))
        history += [{"fold": k, **h} for h in res.history]
        best_epochs.append(res.best_epoch)
    epochs = max(1, int(round(float(np.median(best_epochs)))))
    init = None
    if strategy == "lp_ft":
        init = head_from_config(cfg, n_classes, cfg.seed).fit(feats_train, y).to_linear()
    final_cfg = ft.model_copy(update={"epochs": epochs})
    res = finetune(copy.deepcopy(backbone), train, None, n_classes, final_cfg, folder / "final",
                   head_init=init, augment=aug, seed=cfg.seed, progress=progress)
    save_weights(folder / "model.safetensors", res.model)
    test_p = res.model.predict_proba(test, batch_size=cfg.train.embed_batch_size) if len(test) \
        else np.zeros((0, n_classes), np.float32)
    return CandidateResult(name=name, kind="single", oof=oof, test=np.asarray(test_p, np.float32),
                           cv_scores=scores, backbone=backbone.spec, strategy=strategy,
                           history=history, fit_seconds=time.perf_counter() - t0,
                           params=n_params(res.model))


def save_weights(path: Path, module: Any) -> None:
    """Save a module's tensors as safetensors (shared tensors handled), atomically."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    save_model(module, str(tmp))
    tmp.replace(path)


def full_proba(est: Any, X: list, n_classes: int) -> np.ndarray:
    """``est.predict_proba(X)`` over all ``n_classes`` columns (classes a training fold lacked: 0)."""
    p = np.zeros((len(X), n_classes), np.float32)
    if len(X):
        p[:, est.classes_] = est.predict_proba(X)
    return p


def run_raw_estimator(name: str, estimator: Any, train: Dataset, test: Dataset, folds: list,
                      n_classes: int, cfg: ExperimentConfig) -> CandidateResult:
    """A baseline fitted on raw inputs (e.g. TF-IDF + logistic regression)."""
    from sklearn.base import clone

    t0 = time.perf_counter()
    y = train.labels
    X = [train.load(i) for i in range(len(train))]
    Xt = [test.load(i) for i in range(len(test))]

    oof = np.zeros((len(y), n_classes), np.float32)
    scores = []
    for tr, va in folds:
        est = clone(estimator).fit([X[i] for i in tr], y[tr])
        oof[va] = full_proba(est, [X[i] for i in va], n_classes)
        scores.append(score(y[va], oof[va], cfg.evaluate.metric))
    est = clone(estimator).fit(X, y)
    return CandidateResult(name=name, kind="baseline", oof=oof, test=full_proba(est, Xt, n_classes),
                           cv_scores=scores, backbone=None, strategy=None, method=name,
                           fit_seconds=time.perf_counter() - t0)
