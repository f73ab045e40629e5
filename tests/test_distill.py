"""Distillation on real data (sklearn digits): the loss, the hard-label limit, and the gain from a
teacher's soft labels on unlabelled rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from transfuse.errors import UserError
from transfuse.fuse.distill import DistilledProbe, agreement, kd_loss, soften


def test_soften_and_kd_loss_match_hand_computation():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    s = soften(p, 2.0).numpy()
    q = np.sqrt(p) / np.sqrt(p).sum(1, keepdims=True)
    assert np.allclose(s, q)
    z = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]], dtype=torch.float64)
    y = torch.tensor([0, -1])  # the second row is unlabelled: teacher term only
    T, a = 2.0, 0.25
    lz = z.numpy() / T
    log_sm = lz - np.log(np.exp(lz).sum(1, keepdims=True))
    soft = -(q * log_sm).sum(1) * T**2 * (1 - a)
    zz = z.numpy()
    hard0 = -(zz[0, 0] - np.log(np.exp(zz[0]).sum()))
    want = (soft[0] + a * hard0 + soft[1]) / 2
    assert kd_loss(z, torch.as_tensor(q), y, T, a).item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("T, alpha", [(1.0, 0.0), (2.0, 0.3), (4.0, 1.0)])
def test_student_objective_is_kd_loss_with_its_autograd_gradient(T, alpha):
    """The numpy objective the student minimises: value and gradient equal torch's kd_loss (plus
    the L2 term) and its autograd gradient at random weights, with unlabelled rows."""
    from transfuse.fuse.distill import kd_objective

    rng = np.random.default_rng(1)
    n, d, c, wd = 12, 5, 3, 0.3
    Z, q = rng.normal(size=(n, d)), rng.dirichlet(np.ones(c), n)
    y = rng.integers(0, c, n)
    y[:4] = -1
    soft = soften(q, T)
    w = rng.normal(size=(d + 1) * c)
    value, grad = kd_objective(Z, soft.numpy(), y, T, alpha, wd, c)(w)
    W = torch.tensor(w[:d * c].reshape(c, d), requires_grad=True)
    b = torch.tensor(w[d * c:], requires_grad=True)
    want = kd_loss(torch.as_tensor(Z) @ W.T + b, soft, torch.as_tensor(y), T, alpha) + 0.5 * wd * (W**2).sum()
    want.backward()
    assert value == pytest.approx(want.item(), rel=1e-12)
    assert np.abs(grad - np.concatenate([W.grad.numpy().ravel(), b.grad.numpy()])).max() < 1e-12


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = d.data.astype(np.float64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    return X[idx], d.target[idx]


def test_alpha_one_is_logistic_regression(digits):
    X, y = digits
    X, y = X[:300], y[:300]
    wd = 1e-2
    st = DistilledProbe(10, temperature=3.0, alpha=1.0, weight_decay=wd, max_iter=500).fit(
        X, np.full((len(X), 10), 0.1), y)
    Z = (X - X.mean(0)) / np.where(X.std(0) > 1e-12, X.std(0), 1.0)
    ref = LogisticRegression(C=1 / (wd * len(X)), tol=1e-10, max_iter=5000).fit(Z, y)
    assert np.abs(st.predict_proba(X) - ref.predict_proba(Z)).max() < 1e-3


def test_near_constant_column_does_not_blow_up_the_raw_head(digits):
    """A column that is constant up to float noise (as 3 of MiniLM's 384 features are on short
    texts) keeps scale 1, as in the probes' standardiser: the raw-feature head stays bounded, so a
    fine-tuned student can start from it."""
    X, y = digits
    X, y = X[:300].astype(np.float64), y[:300]
    noisy = np.c_[X, 0.5 + 1e-9 * np.random.default_rng(0).standard_normal(len(X))]
    st = DistilledProbe(10, alpha=1.0, weight_decay=1e-2).fit(noisy, np.full((len(X), 10), 0.1), y)
    W, _ = st.to_linear()
    assert st.scale_[-1] == 1.0
    assert np.abs(W).max() < 10  # with a 1e-12 floor this column's weights were ~1e8
    base = DistilledProbe(10, alpha=1.0, weight_decay=1e-2).fit(X, np.full((len(X), 10), 0.1), y)
    assert np.abs(st.predict_proba(noisy) - base.predict_proba(X)).max() < 1e-6


def test_teacher_soft_labels_on_unlabelled_rows_help_the_student(digits):
    """A strong teacher (10-NN on 8x8 pixels) labels 900 unlabelled rows; a weak student (linear
    head on 2x2-pooled 4x4 pixels, 60 labelled rows) learns more from them than from its labels."""
    X, y = digits
    lab, unl, test = np.arange(60), np.arange(60, 960), np.arange(960, 1797)
    teacher = KNeighborsClassifier(10, weights="distance").fit(X[:400], y[:400])  # saw 400 labels
    pooled = X.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(len(X), 16)
    P_unl, P_test = teacher.predict_proba(X[unl]), teacher.predict_proba(X[test])
    tr = np.concatenate([lab, unl])
    y_tr = np.concatenate([y[lab], np.full(len(unl), -1)])
    soft_tr = np.concatenate([np.eye(10)[y[lab]], P_unl])
    hard = DistilledProbe(10, alpha=1.0).fit(pooled[lab], np.eye(10)[y[lab]], y[lab])
    student = DistilledProbe(10, temperature=2.0, alpha=0.3).fit(pooled[tr], soft_tr, y_tr)
    acc = lambda p: float(np.mean(p.argmax(1) == y[test]))
    ph, ps = hard.predict_proba(pooled[test]), student.predict_proba(pooled[test])
    assert acc(ps) > acc(ph) + 0.03, (acc(ps), acc(ph))
    # agreement with the teacher, computed independently
    assert agreement(ps, P_test) == pytest.approx(np.mean(ps.argmax(1) == P_test.argmax(1)))
    assert agreement(ps, P_test) > agreement(ph, P_test)


def test_bad_teacher_shape_is_refused(digits):
    X, y = digits
    with pytest.raises(UserError, match="teacher probabilities"):
        DistilledProbe(10).fit(X[:20], np.full((20, 3), 1 / 3), y[:20])


@pytest.mark.real
def test_joint_late_fusion_trains_copies_and_predicts(tmp_path):
    """Joint fine-tuning of two real backbones under one MLP: the caller's backbones are left
    untouched, the fused model fits its training rows and gives probabilities per row."""
    from conftest import write_digits_folder

    from transfuse.backbones.registry import create_backbone
    from transfuse.config import FuseConfig
    from transfuse.data.registry import load_dataset
    from transfuse.fuse.joint import fit_joint, predict_joint

    data = load_dataset("folder", str(write_digits_folder(tmp_path, classes=(0, 1), per_class=8)))
    a = create_backbone("bundled:efficientnet_lite0", image_size=32)
    b = create_backbone("bundled:efficientnet_lite0", image_size=32)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    opts = FuseConfig().joint.model_copy(update={"epochs": 4, "batch_size": 8, "head_lr": 3e-3})
    net = fit_joint({"a": a, "b": b}, data, 2, opts, seed=0)
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())
    p = predict_joint(net, data, batch_size=8)
    assert p.shape == (16, 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.mean(p.argmax(1) == data.labels) >= 0.9


def _image_data(n: int = 6):
    from transfuse.data.base import Dataset
    from transfuse.data.images import array_to_image

    rng = np.random.default_rng(0)
    items = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(n)]
    return Dataset(modality="image", items=items, labels=np.arange(n) % 2, classes=["a", "b"],
                   ids=[f"img{i}" for i in range(n)], loader=array_to_image)


def test_augmented_views_keep_labels_and_depend_on_content_only():
    from transfuse.fuse.distill import augmented_views

    data = _image_data()
    views, src = augmented_views(data, 2, seed=0)
    assert len(views) == 12 and src.tolist() == [0, 1, 2, 3, 4, 5] * 2
    assert views.labels.tolist() == data.labels[src].tolist()
    assert views.load(0).size == (16, 16)
    assert not np.array_equal(views.items[0], data.items[0])  # an actual change
    assert not np.array_equal(views.items[0], views.items[6])  # two different views
    # the same image in another dataset, at another row, gets the same views (cache reuse)
    rev, src_rev = augmented_views(data.subset([5, 4, 3, 2, 1, 0]), 2, seed=0)
    assert np.array_equal(rev.items[5], views.items[0]) and src_rev[5] == 5
    assert set(rev.item_hashes()) == set(views.item_hashes())


def test_augmented_views_refuse_text():
    from transfuse.data.base import Dataset
    from transfuse.fuse.distill import augmented_views

    text = Dataset(modality="text", items=["x", "y"], labels=[0, 1], classes=["a", "b"], ids=["0", "1"])
    with pytest.raises(UserError, match="needs image inputs"):
        augmented_views(text, 1)


def test_unlabelled_inputs_leave_out_every_train_and_test_item():
    from transfuse.data.base import Dataset
    from transfuse.fuse.distill import unlabelled_inputs

    words = [f"gloss number {i}" for i in range(30)]
    pool = Dataset(modality="text", items=words, labels=np.arange(30) % 5, classes=list("vwxyz"),
                   ids=[str(i) for i in range(30)])
    train, test = pool.subset(range(10)), pool.subset(range(25, 30))
    unl = unlabelled_inputs(pool, [train, test], ["a", "b"], max_items=8, seed=1)
    assert len(unl) == 8 and len(set(unl.items)) == 8
    assert not set(unl.items) & set(words[:10] + words[25:])
    assert (unl.labels == -1).all() and unl.classes == ["a", "b"]
    assert len(unlabelled_inputs(pool, [train, test], ["a", "b"], max_items=None)) == 15


def test_teacher_refit_uses_only_its_rows(digits):
    """The refitted mean-ensemble teacher equals its members fitted on ``fit_rows`` alone (an
    independent computation), and the labels of every other row cannot change it."""
    from sklearn.model_selection import cross_val_predict
    from sklearn.naive_bayes import GaussianNB

    from transfuse.adapt.cross_fit import inner_folds
    from transfuse.fuse.student import Teacher

    X, y = digits
    X1, X2 = X[:400, :32], X[:400, 32:]
    make = lambda seed: GaussianNB(var_smoothing=1e-2)
    fit_rows, pred_rows = np.arange(0, 200), np.arange(300, 400)
    teacher = Teacher("mean", members=[(X1, make), (X2, make)])
    y = y[:400].copy()
    soft, pred = teacher.probs(y, fit_rows, pred_rows, 10, n_folds=3, seed=0)
    want = np.mean([GaussianNB(var_smoothing=1e-2).fit(Z[:200], y[:200]).predict_proba(Z[300:])
                    for Z in (X1, X2)], axis=0)
    assert np.allclose(pred, want, atol=1e-6)
    # the cross-fitted soft labels: the teacher's inner folds over its own rows (stratified, seeded)
    folds = inner_folds(y[:200], 3, 0)
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(200))
    want_soft = np.mean([cross_val_predict(GaussianNB(var_smoothing=1e-2), Z[:200], y[:200], cv=folds,
                                           method="predict_proba") for Z in (X1, X2)], axis=0)
    assert np.allclose(soft, want_soft, atol=1e-6)
    y[200:] = (y[200:] + 1) % 10  # other rows' labels are never read
    soft2, pred2 = teacher.probs(y, fit_rows, pred_rows, 10, n_folds=3, seed=0)
    assert np.array_equal(pred, pred2) and np.array_equal(soft, soft2)
