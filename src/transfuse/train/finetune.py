"""Fine-tuning tier: a backbone + linear head trained end to end with a Lightning Trainer.

``finetune()`` is a short script: set up (seed, model, loaders, trainer), fit (resuming from
``checkpoints/last.ckpt`` when an earlier fit was interrupted), save (best weights as
safetensors, validation probabilities, a ``finetune.json`` marker written last). A folder with
the marker is returned as is, without training. Checkpoints are only ever read with
``torch.load(weights_only=True)``: they hold tensors and primitive values, nothing executable.

Lightning is imported lazily (it takes seconds), so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transfuse.backbones.base import Backbone
from transfuse.config import FinetuneConfig
from transfuse.data.base import Dataset
from transfuse.distributed import following, keep_followers, wait_for_rank0
from transfuse.errors import UserError
from transfuse.io import (
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
)
from transfuse.train.loaders import make_loader, predict_batches
from transfuse.train.losses import ClassificationLoss, resolve_class_weights

if TYPE_CHECKING:
    import lightning.pytorch as pl

MARKER = "finetune.json"
SIGNATURE = "finetune_config.json"
WEIGHTS = "model.safetensors"
VAL_PROBA = "val_proba.npz"
CKPT_DIR = "checkpoints"
#: Settings that say where a fit runs, not what it computes: a resume may change them.
PLACEMENT_KEYS = frozenset({"accelerator", "devices", "num_nodes", "strategy", "num_workers"})


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``"auto"``: bf16-mixed on a CUDA GPU with bf16, 16-mixed on other CUDA GPUs, else 32-true."""
    if precision != "auto":
        return precision
    if _uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _uses_cuda(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


class StandardizedMLP(nn.Module):
    """A served MLP probe head: ``(x - mean) / scale`` -> Linear -> GELU -> Linear (dropout is
    the identity at inference)."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, net: nn.Module):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        self.net = net
        self.out_features = net[-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.scale)


def head_module(tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The head saved by :func:`transfuse.artifacts.save.head_tensors`: an ``nn.Linear`` (keys ``weight``,
    ``bias``) or a :class:`StandardizedMLP` (keys ``mean``, ``scale``, ``net.*``)."""
    from transfuse.train.heads import mlp

    if "net.0.weight" not in tensors:
        w = tensors["weight"]
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w, "bias": tensors["bias"]})
        return lin
    layers = sorted(int(k.split(".")[1]) for k in tensors if k.startswith("net.") and k.endswith(".weight"))
    first, last = tensors[f"net.{layers[0]}.weight"], tensors[f"net.{layers[-1]}.weight"]
    net = mlp(first.shape[1], first.shape[0], last.shape[0], 0.0)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    return StandardizedMLP(tensors["mean"], tensors["scale"], net)


class Classifier(nn.Module):
    """A backbone with a linear head (optional dropout in between): input batch -> logits."""

    def __init__(self, backbone: Backbone, n_classes: int, dropout: float = 0.0, freeze_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.feature_dim, n_classes)
        self.freeze_bn = freeze_bn

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(batch)))

    def train(self, mode: bool = True) -> Classifier:
        """As ``nn.Module.train``; with ``freeze_bn`` the BatchNorm layers stay in eval mode."""
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @torch.no_grad()
    def init_head(self, weight: np.ndarray | torch.Tensor, bias: np.ndarray | torch.Tensor) -> None:
        """Start the head from a probe's ``(n_classes, feature_dim)`` weights and bias (LP-FT).

        The probe must act on raw backbone features; see :func:`fold_standardizer` otherwise.
        """
        w = torch.as_tensor(np.asarray(weight), dtype=self.head.weight.dtype)
        b = torch.as_tensor(np.asarray(bias), dtype=self.head.bias.dtype).reshape(-1)
        if tuple(w.shape) != tuple(self.head.weight.shape) or b.numel() != self.n_classes:
            raise UserError(
                f"head_init: expected weights {tuple(self.head.weight.shape)} and bias ({self.n_classes},), "
                f"got {tuple(w.shape)} and ({b.numel()},); train the probe on this backbone's features"
            )
        self.head.weight.copy_(w)
        self.head.bias.copy_(b)

    @torch.inference_mode()
    def predict_proba(self, dataset: Dataset, batch_size: int = 64, num_workers: int | str = 0) -> np.ndarray:
        """Class probabilities ``(len(dataset), n_classes)`` in dataset order (eval mode)."""
        return predict_batches(self, dataset, lambda b: F.softmax(self(b).float(), dim=-1), self.n_classes,
                               batch_size, num_workers)


@dataclass
class StepCost:
    """Measured unit costs of fine-tuning one backbone: seconds per training step (decode,
    transform, forward, backward, AdamW update) and per inference batch, both at ``batch_size``."""

    train_step: float
    infer_batch: float
    batch_size: int


def measure_step(backbone: Backbone, train_ds: Dataset, n_classes: int, cfg: FinetuneConfig,
                 augment: Any = None, seed: int = 0, rows: int = 8) -> StepCost:
    """Time real training steps and inference passes on the first ``rows`` and ``2 * rows`` items
    of ``train_ds`` (a copy of the backbone, after a warm-up step for kernels and allocators), and
    extrapolate the line through the two to ``cfg.batch_size``: a step's fixed costs are counted
    once, not scaled with the rows (scaling one 8-row step by 4 overestimated MiniLM's 32-row
    step about 1.7 times). What the time-limit planner multiplies by the steps a fit will take.
    Checks the run's time limit between steps."""
    from transfuse.budget import check
    from transfuse.train.cache import pick_device

    device = pick_device()
    bs = max(1, min(cfg.batch_size, len(train_ds)))
    b = max(1, min(rows, bs))
    b2 = min(2 * b, bs, len(train_ds))
    model = Classifier(copy.deepcopy(backbone), n_classes, cfg.dropout, cfg.freeze_bn).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the measured step changes nothing that matters

    def step(k: int) -> float:
        check("measuring a fine-tuning step")
        t = time.perf_counter()
        x, y = next(iter(make_loader(train_ds.subset(range(k)), model.backbone, train=True, batch_size=k,
                                     augment=augment, num_workers=0, seed=seed)))
        loss = F.cross_entropy(model(model.backbone.batch_to(x, device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    def infer(k: int) -> float:
        check("measuring a fine-tuning step")
        t = time.perf_counter()
        model.predict_proba(train_ds.subset(range(k)), batch_size=k)
        return time.perf_counter() - t

    step(b)  # warm-up
    t1, t2 = step(b), step(b2)
    i1, i2 = infer(b), infer(b2)
    return StepCost(train_step=_extrapolate(b, t1, b2, t2, bs), infer_batch=_extrapolate(b, i1, b2, i2, bs),
                    batch_size=bs)


def _extrapolate(n1: int, t1: float, n2: int, t2: float, n: int) -> float:
    """Seconds for ``n`` rows on the line through ``(n1, t1)`` and ``(n2, t2)``; never below the
    larger measurement (``n >= n2``) and never above scaling it linearly from zero."""
    if n2 <= n1:
        return max(t1, t2) * n / max(n1, n2)
    slope = max(0.0, (t2 - t1) / (n2 - n1))
    return min(max(t2 + slope * (n - n2), t2), t2 * n / n2)


def fold_standardizer(
    weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``(x - mean) / scale`` into a linear probe so it acts on raw features:
    ``W' = W / scale``, ``b' = b - W' @ mean``."""
    w = np.asarray(weight, np.float64) / np.asarray(scale, np.float64)[None, :]
    b = np.asarray(bias, np.float64) - w @ np.asarray(mean, np.float64)
    return w, b


def build_param_groups(model: Classifier, cfg: FinetuneConfig) -> list[dict]:
    """Optimizer groups: the backbone's (layer-wise lr decay) plus the head's at ``head_lr``."""
    groups = model.backbone.param_groups(cfg.lr, cfg.layer_decay, cfg.weight_decay)
    for g in groups:
        g["name"] = f"backbone.{g.get('layer_id', 0)}"
    groups.append({"params": list(model.head.parameters()), "lr": cfg.resolved_head_lr(),
                   "weight_decay": cfg.weight_decay, "name": "head"})
    return groups


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step ``step``: linear warm-up, then cosine or flat."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class FinetuneResult:
    """What a fit produced. ``model`` holds the best epoch's weights (on the CPU)."""

    model: Classifier
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    val_proba: np.ndarray
    seconds: float
    initial: dict[str, float] = field(default_factory=dict)
    resumed_from_epoch: int = 0
    #: processes that trained it together (DDP: devices x nodes)
    world_size: int = 1


def _module_class() -> type:
    """The LightningModule class (built on first use, so lightning is imported lazily)."""
    global _FinetuneModule
    if _FinetuneModule is not None:
        return _FinetuneModule
    import lightning.pytorch as pl

    class FinetuneModule(pl.LightningModule):
        """Trains a :class:`Classifier`; keeps a per-epoch history inside its checkpoints."""

        def __init__(self, model: Classifier, cfg: FinetuneConfig, class_weight: torch.Tensor | None):
            super().__init__()
            self.model = model
            self.cfg = cfg
            self.loss_fn = ClassificationLoss(class_weight, cfg.label_smoothing)
            self.history: list[dict[str, float]] = []
            self.initial: dict[str, float] = {}
            self.resumed_from_epoch = 0
            self._train = torch.zeros(2)  # loss sum, count
            self._val = torch.zeros(3)  # loss sum, correct, count
            self.validate = True
            self.fit_key: dict[str, Any] = {}
            self.n_val = 0  # validation rows (the whole set, over all ranks)
            self._val_left = 0

        def on_fit_start(self) -> None:
            check_same_fit(self.fit_key, self.trainer.world_size)

        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            x, y = batch
            return self.model.backbone.batch_to(x, device), y.to(device)

        def on_train_epoch_start(self) -> None:
            self._train = torch.zeros(2, device=self.device)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            self._train += torch.stack([loss.detach().float() * y.numel(), y.new_tensor(y.numel()).float()])
            return loss

        def on_train_epoch_end(self) -> None:
            if self.validate:
                return  # the entry is written after validation
            t_sum, t_n = self.trainer.strategy.reduce(self._train, reduce_op="sum").tolist()
            entry = {"epoch": self.current_epoch + 1, "train_loss": t_sum / max(t_n, 1.0)}
            self.log("train_loss", entry["train_loss"], sync_dist=True, prog_bar=True)
            self.history.append(entry)

        def on_validation_epoch_start(self) -> None:
            self._val = torch.zeros(3, device=self.device)
            # under DDP, Lightning's DistributedSampler pads the validation set to a multiple of the
            # ranks by repeating its first rows, which land last on their ranks: count each row once
            w, r = self.trainer.world_size, self.trainer.global_rank
            self._val_left = self.n_val if w <= 1 else max(0, -(-(self.n_val - r) // w))

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self.model(x).float()
            keep = min(y.numel(), self._val_left)
            self._val_left -= keep
            logits, y = logits[:keep], y[:keep]
            self._val += torch.stack([F.cross_entropy(logits, y, reduction="sum"),
                                      (logits.argmax(-1) == y).sum().float(), y.new_tensor(y.numel()).float()])

        def on_validation_epoch_end(self) -> None:
            loss_sum, correct, n = self.trainer.strategy.reduce(self._val, reduce_op="sum").tolist()
            val = {"val_loss": loss_sum / max(n, 1.0), "val_accuracy": correct / max(n, 1.0)}
            if self.trainer.sanity_checking:
                if self.global_step == 0 and not self.initial:
                    self.initial = val
                return
            t_sum, t_n = self.trainer.strategy.reduce(self._train, reduce_op="sum").tolist()
            entry = {"epoch": self.current_epoch + 1, "train_loss": t_sum / max(t_n, 1.0), **val}
            self.log_dict({k: float(v) for k, v in entry.items() if k != "epoch"}, sync_dist=True,
                          prog_bar=True)
            self.history.append(entry)

        def configure_optimizers(self) -> dict:
            opt = torch.optim.AdamW(build_param_groups(self.model, self.cfg), lr=self.cfg.lr)
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warm = int(round(self.cfg.warmup * total))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: lr_factor(step, total, warm, self.cfg.schedule))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def on_save_checkpoint(self, checkpoint: dict) -> None:
            checkpoint["transfuse"] = {"history": self.history, "initial": self.initial}

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            state = checkpoint.get("transfuse", {})
            self.history = list(state.get("history", []))
            self.initial = dict(state.get("initial", {}))
            self.resumed_from_epoch = len(self.history)

    _FinetuneModule = FinetuneModule
    return FinetuneModule


_FinetuneModule: type | None = None


def _safe_checkpoint_io() -> Any:
    """Lightning's checkpoint IO (atomic writes), reading only with ``weights_only=True``."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class SafeCheckpointIO(TorchCheckpointIO):
        def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)

    return SafeCheckpointIO()


def finetune(
    backbone: Backbone,
    train_ds: Dataset,
    val_ds: Dataset | None,
    n_classes: int,
    cfg: FinetuneConfig,
    out_dir: str | Path,
    head_init: tuple[np.ndarray, np.ndarray] | None = None,
    augment: Any = None,
    seed: int = 0,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``backbone`` + a new linear head on ``train_ds``, selecting on ``val_ds``.

    ``out_dir`` receives ``checkpoints/{best,last}.ckpt``, ``logs/{csv,tensorboard}``, the best
    weights ``model.safetensors``, ``val_proba.npz`` and the marker ``finetune.json``. An
    interrupted fit resumes from ``last.ckpt``; a finished one is loaded, not retrained. The
    caller's backbone is not modified (a copy is trained). ``head_init=(W, b)`` starts the head
    from a linear probe (LP-FT). ``val_ds=None`` trains exactly ``cfg.epochs`` epochs with no
    validation (a refit on all training data); the last epoch is then the "best".
    """
    if not getattr(backbone, "trainable", True):
        raise UserError(
            f"backbone {backbone.spec or type(backbone).__name__} cannot be fine-tuned (not trainable); "
            "use the 'linear_probe' strategy for it"
        )
    validate = val_ds is not None
    if len(train_ds) == 0 or (validate and len(val_ds) == 0):
        raise UserError("finetune: the training and validation sets must both be non-empty")
    out = Path(out_dir)
    _check_signature(out, cfg, n_classes, seed, backbone)
    if (out / MARKER).is_file():
        return _load_finished(out, backbone, n_classes, cfg)

    start = time.perf_counter()
    import lightning.pytorch as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    net = copy.deepcopy(backbone)
    net._weights_hash = None
    model = Classifier(net, n_classes, cfg.dropout, cfg.freeze_bn)
    if head_init is not None:
        model.init_head(*head_init)
    model.train()  # Lightning keeps each module's mode as found; freeze_bn applies here
    weight = resolve_class_weights(cfg.class_weight, train_ds.labels, n_classes)
    module = _module_class()(model, cfg, weight)
    module.validate = validate
    module.n_val = len(val_ds) if validate else 0
    last = out / CKPT_DIR / "last.ckpt"
    module.fit_key = fit_key(out, cfg, n_classes, seed, backbone, train_ds, val_ds, last.is_file())

    pin = _uses_cuda(cfg.accelerator)
    loaders = [make_loader(ds, model.backbone, train=train, batch_size=cfg.batch_size, augment=augment,
                           num_workers=cfg.num_workers, pin_memory=pin, seed=seed)
               for ds, train in ((train_ds, True), (val_ds, False)) if ds is not None]
    deterministic_state = (torch.are_deterministic_algorithms_enabled(),
                           torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        with warnings.catch_warnings(), _quiet_lightning(True):
            warnings.filterwarnings("ignore", message=r".*(does not have many workers|exists and is not empty"
                                    r"|module\(s\) in eval mode|treespec, LeafSpec|no `val_dataloader`).*")
            trainer, ckpt_cb = _make_trainer(cfg, out, progress, validate)
            trainer.fit(module, *loaders, ckpt_path=last if last.is_file() else None, weights_only=True)
    finally:
        torch.use_deterministic_algorithms(deterministic_state[0], warn_only=deterministic_state[1])
    keep_followers(trainer)  # the ranks Lightning's launcher started (rank 0 waits for them at the end)
    global _fits_joined
    _fits_joined += 1

    best_path = Path(ckpt_cb.best_model_path or out / CKPT_DIR / "best.ckpt")
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    best_epoch = len(best["transfuse"]["history"])
    history = module.history
    model = module.model.to(trainer.strategy.root_device)
    val_proba = model.predict_proba(val_ds, cfg.batch_size) if validate else np.zeros((0, n_classes), np.float32)
    model = model.cpu()
    score_key = cfg.monitor if validate else "train_loss"
    result = FinetuneResult(model=model, history=history, best_epoch=best_epoch,
                            best_score=float(history[best_epoch - 1][score_key]), val_proba=val_proba,
                            seconds=time.perf_counter() - start, initial=module.initial,
                            resumed_from_epoch=module.resumed_from_epoch, world_size=trainer.world_size)
    if trainer.is_global_zero:
        _save_finished(out, result, cfg)
    return result


_fits_joined = 0


def fits_joined() -> int:
    """How many ``Trainer.fit`` calls this process has run (fits loaded from a finished folder
    are not counted): a follower rank reports it."""
    return _fits_joined


def _rows_digest(ds: Dataset | None) -> str | None:
    if ds is None:
        return None
    h = hashlib.sha256()
    for i, label in zip(getattr(ds, "ids", None) or range(len(ds)), np.asarray(ds.labels).tolist()):
        h.update(f"{i}:{label};".encode())
    return h.hexdigest()[:16]


def fit_key(out: Path, cfg: FinetuneConfig, n_classes: int, seed: int, backbone: Backbone, train_ds: Dataset,
            val_ds: Dataset | None, resuming: bool) -> dict[str, Any]:
    """What identifies one fit across the ranks of a distributed run: its folder (the last two
    parts: candidate and fold, the same on every machine), its settings, its rows, and whether it
    resumes a checkpoint."""
    return {"fit": "/".join(out.parts[-2:]), "settings": json.loads(json.dumps(
        _signature(cfg, n_classes, seed, backbone))), "train rows": _rows_digest(train_ds),
        "validation rows": _rows_digest(val_ds), "resumes a checkpoint": resuming}


def check_same_fit(key: dict[str, Any], world_size: int) -> None:
    """Under DDP, every rank must be at the same fit with the same rows: the ranks compare their
    :func:`fit_key` (``all_gather_object``) before the first step; a difference is a one-line
    error on every rank instead of a fit that silently trains on different data per rank."""
    if world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    keys: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(keys, key)
    for r, k in enumerate(keys):
        if k != keys[0]:
            diff = [f for f in keys[0] if k.get(f) != keys[0][f]]
            raise UserError(
                f"rank {r} is not at the same fine-tuning fit as rank 0 (differs in: {', '.join(diff)}; rank 0 at "
                f"{keys[0]['fit']!r}, rank {r} at {k['fit']!r}); start every rank with the same command, config "
                "and data, with the run folder on storage all of them see (docs/distributed.md)")


@contextlib.contextmanager
def _quiet_lightning(quiet: bool) -> Iterator[None]:
    """Hide Lightning's start-up chatter (devices found, tips); the progress bar stays."""
    log = logging.getLogger("lightning.pytorch")
    level = log.level
    if quiet:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _make_trainer(cfg: FinetuneConfig, out: Path, progress: bool,
                  validate: bool = True) -> tuple[pl.Trainer, Any]:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        ModelCheckpoint,
        RichProgressBar,
    )
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    mode = "min" if cfg.monitor == "val_loss" else "max"
    ckpt_cb = ModelCheckpoint(dirpath=out / CKPT_DIR, filename="best", monitor=cfg.monitor if validate else None,
                              mode=mode, save_top_k=1, save_last=True, enable_version_counter=False)
    callbacks: list = [ckpt_cb]
    from transfuse.budget import active_budget

    if active_budget() is not None:
        callbacks.append(_deadline_callback())
    if cfg.patience is not None and validate:
        callbacks.append(EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience))
    if progress:

        class ProgressBar(RichProgressBar):
            def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
                return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}

        callbacks.append(ProgressBar())
    loggers = [CSVLogger(out, name="logs", version="csv"),
               TensorBoardLogger(out, name="logs", version="tensorboard", default_hp_metric=False)]
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg.precision, cfg.accelerator),
        deterministic=True if not _uses_cuda(cfg.accelerator) else "warn",
        gradient_clip_val=cfg.gradient_clip,
        limit_train_batches=cfg.max_train_batches or 1.0,
        num_sanity_val_steps=-1 if validate else 0,  # a full validation pass first: initial scores
        limit_val_batches=1.0 if validate else 0,
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=out,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        plugins=[_safe_checkpoint_io()],
    )
    return trainer, ckpt_cb


def _deadline_callback() -> Any:
    """Checks the run's time limit after every training and validation batch."""
    from lightning.pytorch.callbacks import Callback

    from transfuse.budget import check

    class Deadline(Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            check("fine-tuning")

        def on_validation_batch_end(self, *args: Any) -> None:
            check("fine-tuning")

    return Deadline()


def _signature(cfg: FinetuneConfig, n_classes: int, seed: int, backbone: Backbone) -> dict:
    return {"config": cfg.model_dump(exclude=set(PLACEMENT_KEYS)), "n_classes": n_classes, "seed": seed,
            "backbone": backbone.spec or type(backbone).__name__}


def _check_signature(out: Path, cfg: FinetuneConfig, n_classes: int, seed: int, backbone: Backbone) -> None:
    """Refuse to resume or reuse a folder made with other settings; record them for a new fit."""
    sig = json.loads(json.dumps(_signature(cfg, n_classes, seed, backbone)))
    path = out / SIGNATURE
    if following():  # rank 0 writes the settings just before its fit: the ranks meet there
        wait_for_rank0(path, f"the fine-tune in {out}")
    if path.is_file():
        old = read_json(path)
        if old != sig:
            diff = sorted({k for k in sig["config"] if sig["config"][k] != old.get("config", {}).get(k)}
                          | {k for k in ("n_classes", "seed", "backbone") if sig[k] != old.get(k)})
            raise UserError(
                f"{out}: holds a fine-tune made with other settings (differs in: {', '.join(diff)}); "
                "use a new output folder or delete this one"
            )
    else:
        atomic_write_json(path, sig)


def _save_finished(out: Path, result: FinetuneResult, cfg: FinetuneConfig) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in result.model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS, save(state))
    atomic_save_npz(out / VAL_PROBA, val_proba=result.val_proba)
    atomic_write_json(out / MARKER, {
        "finished": True, "monitor": cfg.monitor, "best_epoch": result.best_epoch,
        "best_score": result.best_score, "history": result.history, "initial": result.initial,
        "seconds": result.seconds, "resumed_from_epoch": result.resumed_from_epoch,
        "world_size": result.world_size,
    })


def _load_finished(out: Path, backbone: Backbone, n_classes: int, cfg: FinetuneConfig) -> FinetuneResult:
    from safetensors.torch import load_file

    from transfuse.tensorfile import check_safetensors

    info = read_json(out / MARKER)
    model = Classifier(copy.deepcopy(backbone), n_classes, cfg.dropout, cfg.freeze_bn)
    model.backbone._weights_hash = None
    try:
        check_safetensors(out / WEIGHTS)
        model.load_state_dict(load_file(out / WEIGHTS), strict=True)
        with np.load(out / VAL_PROBA, allow_pickle=False) as z:
            val_proba = z["val_proba"]
    except (OSError, RuntimeError, KeyError, UserError) as e:
        why = " ".join(str(e).split())[:200]
        raise UserError(f"{out}: finished fine-tune is incomplete or damaged ({why}); delete the folder") from None
    return FinetuneResult(model=model, history=info["history"], best_epoch=int(info["best_epoch"]),
                          best_score=float(info["best_score"]), val_proba=val_proba,
                          seconds=float(info["seconds"]), initial=info.get("initial", {}),
                          resumed_from_epoch=int(info.get("resumed_from_epoch", 0)),
                          world_size=int(info.get("world_size", 1)))

