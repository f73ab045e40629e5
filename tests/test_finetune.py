"""Fine-tuning tier: losses, loaders, config, Classifier, the Lightning fit, LP-FT and resume.

A tiny deterministic conv backbone on sklearn's 8x8 digits stands in for a pretrained model.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn

from transfuse.backbones.base import Backbone
from transfuse.config import FinetuneConfig
from transfuse.data.base import Dataset
from transfuse.errors import UserError
from transfuse.train.finetune import (
    Classifier,
    build_param_groups,
    finetune,
    fold_standardizer,
    lr_factor,
    resolve_precision,
)
from transfuse.train.loaders import make_loader
from transfuse.train.losses import class_weights_from_labels, cross_entropy, resolve_class_weights

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- tiny model and data


def _digit_to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32).unsqueeze(0) / 16.0


class TinyConvBackbone(Backbone):
    """conv(1->8)+BN+ReLU, conv(8->16, stride 2)+ReLU, 2x2 mean pool: 8x8 digits -> 64 features."""

    spec = "test:tinyconv"
    modality = "image"
    feature_dim = 64

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.delay = delay  # seconds per batch, to slow a fit down for the kill-and-resume test

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        x = F.relu(self.bn1(self.conv1(batch)))
        return F.adaptive_avg_pool2d(F.relu(self.conv2(x)), 2).flatten(1)

    def preprocess_config(self) -> dict:
        return {"size": 8, "scale": 1 / 16}

    def make_transform(self, train: bool = False, augment=None):
        return _digit_to_tensor

    def layer_id(self, param_name: str) -> int:
        return 0 if param_name.startswith(("conv1.", "bn1.")) else 1


def make_backbone(seed: int = 0, delay: float = 0.0) -> TinyConvBackbone:
    torch.manual_seed(seed)
    return TinyConvBackbone(delay)


def digits_split(n_train: int = 480, n_val: int = 320) -> tuple[Dataset, Dataset]:
    d = load_digits()
    idx_tr, idx_va = train_test_split(np.arange(len(d.target)), train_size=n_train, test_size=n_val,
                                      stratify=d.target, random_state=0)
    full = Dataset(modality="image", items=list(d.images), labels=d.target,
                   classes=[str(c) for c in range(10)], ids=[f"digits:{i}" for i in range(len(d.target))])
    return full.subset(idx_tr), full.subset(idx_va)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run far faster on one thread than on two busy shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return digits_split()


def quick_cfg(**kw) -> FinetuneConfig:
    base = dict(epochs=3, batch_size=32, lr=3e-2, head_lr="1x", weight_decay=0.0, warmup=0.0,
                patience=None, accelerator="cpu", devices=1, num_workers=0)
    return FinetuneConfig(**{**base, **kw})


def _features(backbone: Backbone, ds: Dataset) -> np.ndarray:
    backbone.eval()
    with torch.no_grad():
        return backbone(torch.stack([_digit_to_tensor(ds.load(i)) for i in range(len(ds))])).numpy()


# ---------------------------------------------------------------- losses


def test_cross_entropy_golden_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    target = torch.tensor([1])
    assert cross_entropy(logits, target).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    # smoothing 0.2 over 2 classes: target distribution (0.1, 0.9)
    expected = 0.1 * -math.log(0.25) + 0.9 * -math.log(0.75)
    assert cross_entropy(logits, target, label_smoothing=0.2).item() == pytest.approx(expected, abs=1e-6)


def test_cross_entropy_weighted_smoothed_matches_formula():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 3))
    y = np.array([0, 2, 1, 2, 0])
    w = np.array([1.0, 2.0, 0.5])
    eps = 0.1
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    per = (1 - eps) * w[y] * -logp[np.arange(5), y] + eps / 3 * (w[None] * -logp).sum(1)
    expected = per.sum() / w[y].sum()
    got = cross_entropy(torch.tensor(z), torch.tensor(y), torch.tensor(w, dtype=torch.float32), eps)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_class_weights_balanced_golden():
    w = class_weights_from_labels([0, 0, 0, 1], n_classes=3)
    np.testing.assert_allclose(w, [4 / 9, 4 / 3, 0.0])
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 1, 1, 2, 2, 2, 2])
    np.testing.assert_allclose(class_weights_from_labels(y, 3),
                               compute_class_weight("balanced", classes=np.arange(3), y=y))


def test_resolve_class_weights():
    assert resolve_class_weights("none", [0, 1], 2) is None
    assert resolve_class_weights([1, 3], [0, 1], 2).tolist() == [1.0, 3.0]
    with pytest.raises(UserError, match="class_weight: expected 3 non-negative numbers"):
        resolve_class_weights([1.0, 2.0], [0, 1], 3)
    with pytest.raises(UserError, match="labels must lie in"):
        class_weights_from_labels([0, 5], 3)


# ---------------------------------------------------------------- config, groups, schedule


def test_config_validation():
    cfg = FinetuneConfig(lr=2e-4, head_lr="10x")
    assert cfg.resolved_head_lr() == pytest.approx(2e-3)
    assert FinetuneConfig(lr=2e-4, head_lr="0.003").resolved_head_lr() == 0.003
    with pytest.raises(ValidationError, match="epoch"):
        FinetuneConfig(epoch=3)  # typo: extra keys are rejected
    with pytest.raises(ValidationError, match="multiple of lr"):
        FinetuneConfig(head_lr="ten")
    with pytest.raises(ValidationError, match="devices"):
        FinetuneConfig(devices=0)
    with pytest.raises(ValidationError):
        cfg.lr = 1.0  # frozen
    assert hash(cfg) == hash(FinetuneConfig(lr=2e-4, head_lr="10x"))
    weighted = FinetuneConfig(class_weight=[1, 2.5])  # a YAML list becomes a hashable tuple
    assert weighted.class_weight == (1.0, 2.5) and hash(weighted) == hash(FinetuneConfig(class_weight=(1, 2.5)))
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_layer_decay_param_groups_golden():
    model = Classifier(make_backbone(), 10)
    groups = build_param_groups(model, quick_cfg(lr=1e-3, layer_decay=0.5, head_lr="10x", weight_decay=0.05))
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx({"backbone.0": 5e-4, "backbone.1": 1e-3, "head": 1e-2})
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    bb = model.backbone
    assert by_name["backbone.0"] == {id(p) for p in [*bb.conv1.parameters(), *bb.bn1.parameters()]}
    assert by_name["backbone.1"] == {id(p) for p in bb.conv2.parameters()}
    assert by_name["head"] == {id(model.head.weight), id(model.head.bias)}
    assert {g["weight_decay"] for g in groups} == {0.05}


def test_lr_schedule_golden():
    # 10 steps, 2 of warm-up: 0.5, 1.0, then cosine from 1 down to 0 over the remaining 8
    f = [lr_factor(s, total=10, warmup=2, schedule="cosine") for s in range(10)]
    assert f[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert f[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_factor(7, 10, 2, "constant") == 1.0


# ---------------------------------------------------------------- loaders and Classifier


def test_make_loader_seeded_shuffle_and_order(digits):
    train, _ = digits
    bb = make_backbone()

    def first_labels(seed):
        return next(iter(make_loader(train, bb, True, 64, num_workers=0, seed=seed)))[1].tolist()

    assert first_labels(1) == first_labels(1)
    assert first_labels(1) != first_labels(2)
    batch, labels = next(iter(make_loader(train, bb, False, 16, num_workers=0)))
    assert batch.shape == (16, 1, 8, 8) and labels.dtype == torch.long
    assert labels.tolist() == train.labels[:16].tolist()
    with pytest.raises(UserError, match="batch_size"):
        make_loader(train, bb, False, 0)


def test_fold_standardizer_and_init_head(digits):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 64))
    w, b = rng.normal(size=(10, 64)), rng.normal(size=10)
    mean, scale = rng.normal(size=64), rng.uniform(0.5, 2.0, size=64)
    w2, b2 = fold_standardizer(w, b, mean, scale)
    np.testing.assert_allclose(x @ w2.T + b2, ((x - mean) / scale) @ w.T + b, atol=1e-10)

    model = Classifier(make_backbone(), 10)
    model.init_head(w2, b2)
    np.testing.assert_allclose(model.head.bias.detach().numpy(), b2, rtol=1e-6)
    with pytest.raises(UserError, match=r"head_init: expected weights \(10, 64\)"):
        model.init_head(np.zeros((3, 64)), np.zeros(3))


def test_freeze_bn_keeps_batchnorm_in_eval():
    model = Classifier(make_backbone(), 10, freeze_bn=True).train()
    assert model.training and model.backbone.conv1.training and not model.backbone.bn1.training


# ---------------------------------------------------------------- the fit


def test_finetune_improves_saves_and_reloads(digits, tmp_path):
    train, val = digits
    bb = make_backbone()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    res = finetune(bb, train, val, 10, quick_cfg(epochs=3), tmp_path, progress=False)

    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.initial["val_accuracy"] < 0.3
    assert res.history[-1]["val_accuracy"] > res.initial["val_accuracy"] + 0.4
    assert res.history[-1]["val_loss"] < res.initial["val_loss"]
    best = res.history[res.best_epoch - 1]
    assert res.best_score == min(h["val_loss"] for h in res.history) == best["val_loss"]
    # val_proba comes from the best checkpoint: it reproduces that epoch's logged scores
    assert res.val_proba.shape == (len(val), 10)
    assert (res.val_proba.argmax(1) == val.labels).mean() == pytest.approx(best["val_accuracy"])
    nll = -np.log(res.val_proba[np.arange(len(val)), val.labels]).mean()
    assert nll == pytest.approx(best["val_loss"], rel=1e-4)
    np.testing.assert_allclose(res.model.predict_proba(val, 100), res.val_proba, atol=1e-6)
    # the caller's backbone was not trained
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())

    for name in ("model.safetensors", "finetune.json", "val_proba.npz", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "logs/csv/metrics.csv"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "logs/tensorboard").glob("events.out.tfevents.*"))
    csv_rows = [r for r in (tmp_path / "logs/csv/metrics.csv").read_text().splitlines()[1:] if r]
    assert len(csv_rows) == 3

    # a finished folder is loaded, not retrained
    last_mtime = (tmp_path / "checkpoints/last.ckpt").stat().st_mtime_ns
    again = finetune(bb, train, val, 10, quick_cfg(epochs=3), tmp_path, progress=False)
    assert (tmp_path / "checkpoints/last.ckpt").stat().st_mtime_ns == last_mtime
    assert again.history == res.history and again.best_epoch == res.best_epoch
    np.testing.assert_array_equal(again.val_proba, res.val_proba)
    np.testing.assert_allclose(again.model.predict_proba(val, 100), res.val_proba, atol=1e-6)

    with pytest.raises(UserError, match=r"other settings \(differs in: epochs\)"):
        finetune(bb, train, val, 10, quick_cfg(epochs=4), tmp_path, progress=False)


def test_lp_ft_starts_from_the_probe(digits, tmp_path):
    train, val = digits
    bb = make_backbone()
    probe = LogisticRegression(max_iter=2000).fit(_features(bb, train), train.labels)
    probe_acc = probe.score(_features(bb, val), val.labels)
    res = finetune(bb, train, val, 10, quick_cfg(epochs=1, max_train_batches=2, lr=1e-3),
                   tmp_path, head_init=(probe.coef_, probe.intercept_), progress=False)
    assert res.initial["val_accuracy"] == pytest.approx(probe_acc)
    probe_nll = -np.log(probe.predict_proba(_features(bb, val))[np.arange(len(val)), val.labels]).mean()
    assert res.initial["val_loss"] == pytest.approx(probe_nll, rel=1e-4)


def test_early_stopping_stops(digits, tmp_path):
    train, val = digits
    # nothing can change (lr 0, BatchNorm statistics frozen): the val loss never improves
    cfg = quick_cfg(epochs=10, lr=0.0, head_lr=0.0, freeze_bn=True, patience=2, max_train_batches=2)
    res = finetune(make_backbone(), train, val, 10, cfg, tmp_path, progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.best_epoch == 1
    assert len({h["val_loss"] for h in res.history}) == 1


def test_untrainable_backbone_is_refused(digits, tmp_path):
    bb = make_backbone()
    bb.trainable = False
    with pytest.raises(UserError, match="use the 'linear_probe' strategy"):
        finetune(bb, *digits, 10, quick_cfg(), tmp_path, progress=False)


_CHILD = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_finetune import digits_split, make_backbone, quick_cfg
from transfuse.train.finetune import finetune
train, val = digits_split()
finetune(make_backbone(delay={delay}), train, val, 10, quick_cfg(epochs=3, batch_size=64), {out!r},
         progress=False)
"""


def test_killed_fit_resumes_from_last_checkpoint(digits, tmp_path):
    out = tmp_path / "ft"
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(ROOT / "tests"), delay=0.1, out=str(out)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 90
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert last.is_file(), err.decode()[-2000:]
    assert not (out / "finetune.json").exists()
    saved = torch.load(last, map_location="cpu", weights_only=True)["transfuse"]["history"]
    assert 1 <= len(saved) < 3

    train, val = digits
    res = finetune(make_backbone(), train, val, 10, quick_cfg(epochs=3, batch_size=64), out, progress=False)
    assert res.resumed_from_epoch == len(saved)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.history[: len(saved)] == saved
    assert res.initial and (out / "finetune.json").is_file()
    assert json.loads((out / "finetune.json").read_text())["history"] == res.history


def test_refit_without_validation_trains_fixed_epochs(tmp_path, digits):
    """val_ds=None: exactly cfg.epochs epochs, no early stopping, history of train losses."""
    train, _ = digits
    backbone = TinyConvBackbone()
    cfg = quick_cfg(epochs=2, patience=1)
    res = finetune(backbone, train, None, 10, cfg, tmp_path / "refit", progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert all("val_loss" not in h for h in res.history)
    assert res.best_epoch == 2 and res.val_proba.shape == (0, 10)
    again = finetune(backbone, train, None, 10, cfg, tmp_path / "refit", progress=False)
    assert again.best_epoch == 2


def test_finetune_strategy_selects_its_epoch_inside_the_rows_it_is_given(digits, tmp_path):
    """adapt.finetune: a fold's fit picks its epoch on an inner split of the rows it is given (an
    outer fold's training rows); the other rows (the outer validation fold) never reach it:
    scrambling their pixels and labels leaves the fit unchanged. The shipped refit trains the
    folds' median epoch on all its rows, with no selection."""
    from transfuse.adapt.cross_fit import inner_split
    from transfuse.adapt.finetune import FinetuneStrategy
    from transfuse.config import HeadConfig

    train, val = digits
    rows = np.arange(0, len(train), 2)  # 240 rows
    cfg = quick_cfg(epochs=2, inner_val=0.25, max_train_batches=3)

    def fitted(ds: Dataset, out: Path):
        st = FinetuneStrategy("finetune", make_backbone(), ds, val, cfg, HeadConfig(), out)
        return st, st.fit(rows, 0, "fold0")

    st, f = fitted(train, tmp_path / "a")
    assert set(f.chosen) == {"epochs"} and 1 <= f.chosen["epochs"] <= 2
    assert [h["epoch"] for h in f.history] == [1, 2] and all("val_loss" in h for h in f.history)
    # the selection split: 60 of the 240 rows, stratified; its probabilities are the chosen model's
    itr, iva = inner_split(train.labels[rows], 0.25, 0)
    assert len(iva) == 60 and not set(itr) & set(iva)
    with np.load(tmp_path / "a" / "fold0" / "val_proba.npz") as z:
        np.testing.assert_allclose(z["val_proba"], st.predict(f, rows[iva]), atol=1e-6)
    other = np.setdiff1d(np.arange(len(train)), rows)
    items, labels = list(train.items), train.labels.copy()
    for i in other:
        items[i], labels[i] = np.zeros_like(items[i]), (labels[i] + 1) % 10
    scrambled = Dataset(modality="image", items=items, labels=labels, classes=train.classes, ids=train.ids)
    st2, f2 = fitted(scrambled, tmp_path / "b")
    assert f2.chosen == f.chosen and f2.history == f.history
    np.testing.assert_allclose(st2.predict(f2, None), st.predict(f, None), atol=1e-6)
    # the refit: the median of the folds' epochs, a fixed schedule on all its rows
    assert st.final_choice([{"epochs": 1}, {"epochs": 3}, {"epochs": 2}]) == {"epochs": 2}
    assert st.final_choice([{}, {}]) is None
    g = st.fit(rows, 0, "final", {"epochs": 1})
    assert g.chosen == {"epochs": 1} and [h["epoch"] for h in g.history] == [1]
    assert all("val_loss" not in h for h in g.history)


def test_a_variant_moves_the_training_seed_and_not_the_inner_split(monkeypatch, tmp_path):
    """``adapt.variants``: a variant with its own seed (``seed_shift``) trains every fold and the
    refit with that seed moved (head init, batch order, augmentation), on exactly the inner
    training and validation rows of the run's own fine-tune, so that every fine-tune of a
    backbone chooses its epochs, and greedy soups their ingredients, on the same rows."""
    from types import SimpleNamespace

    import transfuse.train.finetune as ft_module
    from transfuse.adapt.cross_fit import cross_fit
    from transfuse.adapt.finetune import FinetuneStrategy
    from transfuse.config import HeadConfig

    calls: list[dict] = []

    class Model:
        def predict_proba(self, ds, batch_size=64):
            return np.full((len(ds), 3), 1 / 3, np.float32)

    def recorder(backbone, train_ds, val_ds, n_classes, cfg, out_dir, head_init=None, augment=None, seed=0,
                 progress=True):
        calls.append({"train": sorted(train_ds.ids), "val": sorted(val_ds.ids) if val_ds is not None else None,
                      "seed": seed, "tag": Path(out_dir).name})
        return SimpleNamespace(model=Model(), history=[{"epoch": 1}], best_epoch=2)

    monkeypatch.setattr(ft_module, "finetune", recorder)
    n = 60
    y = np.arange(n) % 3
    ds = Dataset(modality="image", items=list(np.zeros((n, 4))), labels=y, classes=["a", "b", "c"],
                 ids=[f"r{i}" for i in range(n)])
    folds = [(np.flatnonzero(np.arange(n) % 3 != k), np.flatnonzero(np.arange(n) % 3 == k)) for k in range(3)]
    runs = {}
    for shift in (0, 5):
        calls.clear()
        st = FinetuneStrategy("finetune", object(), ds, ds.subset([0]), quick_cfg(inner_val=0.25), HeadConfig(),
                              tmp_path / str(shift), seed_shift=shift)
        cross_fit(st, y, folds, 3, "accuracy", 10)
        runs[shift] = list(calls)
    base, variant = runs[0], runs[5]
    assert [c["tag"] for c in base] == [c["tag"] for c in variant] == ["fold0", "fold1", "fold2", "final"]
    assert [c["seed"] for c in base] == [10, 11, 12, 10] and [c["seed"] for c in variant] == [15, 16, 17, 15]
    for b, v, (tr, _) in zip(base, variant, folds):
        assert b["train"] == v["train"] and b["val"] == v["val"]  # the same inner rows
        assert len(b["val"]) == 10 and set(b["train"]) | set(b["val"]) == {f"r{i}" for i in tr}
    assert base[3]["train"] == variant[3]["train"] == sorted(ds.ids) and base[3]["val"] is None
