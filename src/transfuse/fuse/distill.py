"""Knowledge distillation: one small student trained on a fused teacher's soft labels.

Loss per example (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531)::

    alpha * CE(y, softmax(z)) + (1 - alpha) * T^2 * CE(soften(p_teacher, T), softmax(z / T))

``soften(p, T)`` is ``p^(1/T)`` renormalised (the teacher's logits divided by ``T`` when ``p`` is a
softmax). The teacher is given as probabilities, so any fusion (ensemble, stacking, feature
fusion) can teach; rows without a label (unlabelled or augmented inputs) take ``y = -1`` and learn
from the teacher only.

Two students: :class:`DistilledProbe` (a linear head on the student backbone's cached features,
seconds on a CPU; it saves as an ordinary ``head.safetensors``) and :func:`distill_finetune` (the
whole backbone plus head).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transfuse.errors import UserError


def soften(p: np.ndarray | torch.Tensor, temperature: float) -> torch.Tensor:
    """``p^(1/T)`` renormalised per row (computed in log space)."""
    logp = torch.log(torch.as_tensor(p, dtype=torch.float64).clamp_min(1e-12)) / temperature
    return torch.softmax(logp, dim=1)


def kd_loss(logits: torch.Tensor, soft_t: torch.Tensor, y: torch.Tensor, temperature: float,
            alpha: float) -> torch.Tensor:
    """Mean distillation loss; ``soft_t`` is the softened teacher, ``y = -1`` marks unlabelled rows."""
    soft = -(soft_t.to(logits.dtype) * F.log_softmax(logits / temperature, dim=1)).sum(1)
    loss = (1 - alpha) * temperature**2 * soft
    if alpha > 0:
        labelled = y >= 0
        hard = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
        loss = loss + alpha * torch.where(labelled, hard, torch.zeros_like(hard))
    return loss.mean()


def _unpack(w: np.ndarray, d: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    return w[:d * c].reshape(c, d), w[d * c:]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kd_objective(Z: np.ndarray, soft_t: np.ndarray, y: np.ndarray, temperature: float, alpha: float,
                 weight_decay: float, n_classes: int):
    """``w -> (loss, gradient)`` of :func:`kd_loss` of the linear map ``Z W^T + b`` (``w`` = W
    flattened, then b) plus ``weight_decay / 2 * |W|^2``. The gradient of the soft term with
    respect to the logits is ``(1 - alpha) * T * (softmax(z / T) - soft_t)``, of the hard term
    ``alpha * (softmax(z) - onehot(y))`` on labelled rows; both over the number of rows."""
    n, d = Z.shape
    T, labelled = float(temperature), y >= 0
    onehot = np.zeros((n, n_classes))
    onehot[np.flatnonzero(labelled), y[labelled]] = 1.0

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = _unpack(w, d, n_classes)
        z = Z @ W.T + b
        ls_t = _log_softmax(z / T)
        loss = (1 - alpha) * T * T * -(soft_t * ls_t).sum(axis=1)
        g = (1 - alpha) * T * (np.exp(ls_t) - soft_t)
        if alpha > 0:
            ls = _log_softmax(z)
            loss = loss + alpha * np.where(labelled, -(onehot * ls).sum(axis=1), 0.0)
            g = g + alpha * labelled[:, None] * (np.exp(ls) - onehot)
        g /= n
        value = float(loss.mean() + 0.5 * weight_decay * (W**2).sum())
        return value, np.concatenate([(g.T @ Z + weight_decay * W).ravel(), g.sum(axis=0)])

    return f


def _check(X: np.ndarray, teacher: np.ndarray, y: np.ndarray, n_classes: int) -> None:
    if teacher.shape != (len(X), n_classes) or not np.isfinite(teacher).all():
        raise UserError(f"teacher probabilities must be finite with shape ({len(X)}, {n_classes}); "
                        f"got {teacher.shape}")
    if y.shape != (len(X),) or y.max(initial=-1) >= n_classes:
        raise UserError(f"y must hold one class index per row (or -1 for unlabelled); got {y.shape}")


class DistilledProbe:
    """A linear head on the student's features fitted with the distillation loss (full-batch
    L-BFGS on standardised features, L2 ``weight_decay``). ``alpha=1`` is a plain probe."""

    kind = "linear"  # saved as a linear head by :func:`transfuse.artifacts.save.head_tensors`

    def __init__(self, n_classes: int, temperature: float = 2.0, alpha: float = 0.3,
                 weight_decay: float = 1e-3, max_iter: int = 200, seed: int = 0):
        self.n_classes, self.temperature, self.alpha = n_classes, temperature, alpha
        self.weight_decay, self.max_iter, self.seed = weight_decay, max_iter, seed

    def fit(self, X: np.ndarray, teacher: np.ndarray, y: np.ndarray | None = None) -> DistilledProbe:
        from scipy.optimize import minimize

        from transfuse.train.heads import standardizer

        X = np.asarray(X, np.float64)
        teacher = np.asarray(teacher, np.float64)
        y = np.full(len(X), -1) if y is None else np.asarray(y, np.int64)
        _check(X, teacher, y, self.n_classes)
        # the probes' standardiser: a near-constant column keeps scale 1 (with a 1e-12 floor, MiniLM's
        # 3 constant feature columns got scales of 3e-9 and the raw-feature head weights of 2e7,
        # which one fine-tuning step at lr 1e-5 turned into chance accuracy)
        self.mean_, self.scale_ = standardizer(X)
        Z = (X - self.mean_) / self.scale_
        objective = kd_objective(Z, soften(teacher, self.temperature).numpy(), y, self.temperature, self.alpha,
                                 self.weight_decay, self.n_classes)
        # convex (softmax cross-entropies of a linear map, L2): L-BFGS from zero weights, in numpy
        # with the analytic gradient (3x faster than torch's autograd L-BFGS on these small problems)
        r = minimize(objective, np.zeros((X.shape[1] + 1) * self.n_classes), jac=True, method="L-BFGS-B",
                     options={"maxiter": self.max_iter, "gtol": 1e-7, "ftol": 1e-10, "maxcor": 20})
        W, b = _unpack(r.x, X.shape[1], self.n_classes)
        lin = torch.nn.Linear(X.shape[1], self.n_classes).double()
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(W))
            lin.bias.copy_(torch.as_tensor(b))
        self.loss_ = float(r.fun)
        self.linear_ = lin.eval()
        return self

    def to_linear(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` acting on raw features (what ``head.safetensors`` stores)."""
        from transfuse.train.finetune import fold_standardizer

        return fold_standardizer(self.linear_.weight.detach().numpy(), self.linear_.bias.detach().numpy(),
                                 self.mean_, self.scale_)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        W, b = self.to_linear()
        z = np.asarray(X, np.float64) @ W.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset: Any, transform: Any):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.dataset.load(i)), i


def distill_finetune(backbone: Any, train: Any, teacher: np.ndarray, n_classes: int, *,
                     temperature: float = 2.0, alpha: float = 0.3, epochs: int = 3, lr: float = 1e-4,
                     head_lr: float = 1e-3, batch_size: int = 32, weight_decay: float = 0.01,
                     head_init: tuple[np.ndarray, np.ndarray] | None = None, augment: Any = None,
                     seed: int = 0, max_train_batches: int | None = None, freeze_bn: bool = True) -> Any:
    """Fine-tune ``backbone`` + a linear head on ``teacher`` soft labels (and ``train.labels``,
    ``-1`` = unlabelled); returns the eval-mode :class:`~transfuse.train.finetune.Classifier`.
    BatchNorm statistics stay fixed (``freeze_bn``), as in the pipeline's fine-tuning default."""
    from transfuse.train.cache import pick_device
    from transfuse.train.finetune import Classifier

    y = np.asarray(train.labels, np.int64)
    _check(np.zeros((len(train), 1)), np.asarray(teacher), y, n_classes)
    torch.manual_seed(seed)
    device = pick_device()
    model = Classifier(copy.deepcopy(backbone), n_classes, freeze_bn=freeze_bn).to(device)
    if head_init is not None:
        model.init_head(*head_init)
    soft = soften(teacher, temperature).float().to(device)
    yt = torch.as_tensor(y, device=device)
    loader = torch.utils.data.DataLoader(
        _Indexed(train, backbone.make_transform(train=True, augment=augment)), batch_size=batch_size,
        shuffle=True, generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda s: (backbone.collate([a for a, _ in s]), torch.tensor([i for _, i in s])))
    opt = torch.optim.AdamW([{"params": model.backbone.parameters(), "lr": lr},
                             {"params": model.head.parameters(), "lr": head_lr}], weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        for b, (x, idx) in enumerate(loader):
            if max_train_batches is not None and b >= max_train_batches:
                break
            idx = idx.to(device)
            loss = kd_loss(model(model.backbone.batch_to(x, device)).float(), soft[idx], yt[idx],
                           temperature, alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class RowsDataset:
    """Rows of several datasets (each keeps its own loader) seen as one, with given labels: the
    training rows and the teacher-labelled transfer rows a fine-tuned student learns from."""

    def __init__(self, parts: list[Any], rows: np.ndarray, labels: np.ndarray):
        starts = np.cumsum([0] + [len(p) for p in parts])
        self.parts, self.modality = parts, parts[0].modality
        part = np.searchsorted(starts, rows, side="right") - 1
        self.rows = [(int(k), int(r - starts[k])) for k, r in zip(part, rows, strict=True)]
        self.labels = np.asarray(labels, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, i: int) -> Any:
        k, j = self.rows[i]
        return self.parts[k].load(j)


def agreement(p: np.ndarray, q: np.ndarray) -> float:
    """Fraction of rows where two models predict the same class."""
    return float(np.mean(np.argmax(p, 1) == np.argmax(q, 1)))


# ----------------------------------------------------------------------------- transfer set

def _augment_image(seed: int) -> Any:
    """Random resized crop (60-100 % of the area, original size), horizontal flip, colour jitter."""
    from torchvision import transforms as T

    def aug(img: Any) -> Any:
        torch.manual_seed(seed)
        return T.Compose([T.RandomResizedCrop(img.size[::-1], scale=(0.6, 1.0), antialias=True),
                          T.RandomHorizontalFlip(), T.ColorJitter(0.3, 0.3, 0.3)])(img)
    return aug


def augmented_views(data: Any, n_views: int, seed: int = 0) -> tuple[Any, np.ndarray]:
    """``n_views`` augmented copies of every image of ``data`` (an image or multimodal dataset;
    text columns are copied unchanged) as in-memory uint8 arrays, so the feature cache embeds each
    view once. Returns ``(views, source)``: ``source[j]`` is the row of ``data`` view ``j`` comes
    from (views keep their source's label)."""
    import dataclasses

    from transfuse.data.images import array_to_image

    if n_views < 0:
        raise UserError(f"fuse.distill.transfer_views={n_views} is not valid; give an integer >= 0")
    multimodal = hasattr(data, "loaders")
    if not (data.modality == "image" or (multimodal and "image" in data.modalities)):
        raise UserError(f"fuse.distill.transfer_views needs image inputs; {data.name!r} is "
                        f"{data.modality} (set transfer_views: 0)")
    from transfuse.data.base import hash_item

    # each view's randomness comes from its image's content, so the same image gets the same
    # views in every dataset that holds it (and the feature cache embeds them once)
    keys = [int(hash_item(it["image"] if multimodal else it)[:8], 16) for it in data.items]
    items, source = [], []
    for v in range(n_views):
        for i in range(len(data)):
            raw = data.load(i)
            img = raw["image"] if multimodal else raw
            arr = np.asarray(_augment_image(seed * 1_000_003 + v * 100_003 + keys[i])(img), np.uint8)
            items.append({**data.items[i], "image": arr} if multimodal else arr)
            source.append(i)
    src = np.asarray(source, np.int64)
    ids = [f"{data.ids[i]}#view{v}" for v in range(n_views) for i in range(len(data))]
    extra = {"loaders": {**data.loaders, "image": array_to_image}} if multimodal else \
        {"loader": array_to_image}
    views = dataclasses.replace(data, items=items, labels=data.labels[src] if len(src) else
                                np.zeros(0, np.int64), ids=ids, quarantined=[], _hashes=None,
                                name=f"{data.name}:views", **extra)
    return views, src


def unlabelled_inputs(pool: Any, exclude: list[Any], classes: list[str], max_items: int | None,
                      seed: int = 0) -> Any:
    """Rows of ``pool`` whose content appears in none of ``exclude`` (e.g. the run's train and
    test sets), at most ``max_items`` of them (seeded sample), with label ``-1`` and the run's
    ``classes`` (the pool's own labels are never read)."""
    import dataclasses

    seen = {h for d in exclude for h in d.item_hashes()}
    keep = [i for i, h in enumerate(pool.item_hashes()) if h not in seen]
    if max_items is not None and len(keep) > max_items:
        keep = sorted(np.random.default_rng(seed).choice(keep, max_items, replace=False).tolist())
    sub = pool.subset(keep)
    return dataclasses.replace(sub, labels=np.full(len(sub), -1, np.int64), classes=list(classes),
                               quarantined=[], _hashes=sub._hashes)
