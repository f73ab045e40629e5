"""Fast heads on cached features (transfuse.train.heads)."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from transfuse.errors import UserError
from transfuse.train.heads import (
    HeadClassifier,
    HeadConfig,
    LinearHeadProblem,
    lbfgs,
    smoothed_ce,
)


def three_class(n=240, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    z = X @ rng.normal(size=(d, 3)) + rng.normal(scale=2.0, size=(n, 3))
    return X, z.argmax(1)


@pytest.mark.parametrize("standardize", [True, False])
def test_linear_head_matches_sklearn_logistic_regression(standardize):
    X, y = three_class()
    wd = 1e-2
    head = HeadClassifier(weight_decay=wd, standardize=standardize, tol=1e-10).fit(X, y)
    Xs = StandardScaler().fit_transform(X) if standardize else X
    # sklearn minimises C * sum(CE) + ||W||^2 / 2 == n*C * (mean CE + ||W||^2 / (2 n C))
    ref = LogisticRegression(C=1 / (wd * len(X)), tol=1e-10, max_iter=10_000).fit(Xs, y)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(Xs), atol=1e-5)
    np.testing.assert_array_equal(head.predict(X), ref.predict(Xs))


def test_to_linear_folds_standardisation_into_raw_space():
    X, y = three_class()
    head = HeadClassifier().fit(X, y)
    W, b = head.to_linear()
    assert W.shape == (3, X.shape[1]) and b.shape == (3,)
    lin = torch.nn.Linear(
        X.shape[1], 3
    ).double()  # e.g. a fine-tuning head initialised from the probe
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
        p = torch.softmax(lin(torch.from_numpy(X)), dim=1).numpy()
    np.testing.assert_allclose(p, head.predict_proba(X), atol=1e-10)
    with pytest.raises(UserError, match="to_linear\\(\\) needs a linear head"):
        HeadClassifier(kind="mlp", hidden=4, max_iter=2).fit(X, y).to_linear()


def test_smoothed_ce_matches_hand_computation():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 1.0, 3.0]])
    y = np.array([0, 2, 2])
    eps, cw, sw = 0.1, np.array([2.0, 1.0, 0.5]), np.array([1.0, 3.0, 0.5])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = 0.0
    for i in range(3):
        q = np.full(3, eps / 3)
        q[y[i]] += 1 - eps
        expected += sw[i] * cw[y[i]] * -(q * logp[i]).sum()
    expected /= sw.sum()
    got = smoothed_ce(
        torch.tensor(logits),
        torch.tensor(y),
        label_smoothing=eps,
        class_weight=torch.tensor(cw),
        sample_weight=torch.tensor(sw),
    )
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # no smoothing, no weights: torch's own cross-entropy
    plain = smoothed_ce(torch.tensor(logits), torch.tensor(y))
    assert float(plain) == pytest.approx(
        float(torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(y)))
    )


def test_label_smoothing_optimum_is_the_smoothed_target():
    # one-hot features + bias and no penalty: the logits are free, so the optimum is p = q exactly:
    # p(true) = 1 - eps + eps / C = 0.7 + 0.1 = 0.8, every other class 0.1
    y = np.repeat(np.arange(3), 20)
    X = np.eye(3)[y]
    head = HeadClassifier(weight_decay=0.0, label_smoothing=0.3, standardize=False).fit(X, y)
    expected = np.full((60, 3), 0.1)
    expected[np.arange(60), y] = 0.8
    np.testing.assert_allclose(head.predict_proba(X), expected, atol=1e-5)


def test_class_and_sample_weights_shift_the_prior():
    # constant features: only the bias can learn, so p equals the (weighted) class frequencies
    y = np.array([0] * 30 + [1] * 10)
    X = np.zeros((40, 2))
    p = HeadClassifier().fit(X, y).predict_proba(X[:1])[0]
    np.testing.assert_allclose(p, [0.75, 0.25], atol=1e-6)
    # balanced: weight n / (C * n_c) = 40/60 for class 0, 40/20 for class 1 -> 20 : 20
    p = HeadClassifier(class_weight="balanced").fit(X, y).predict_proba(X[:1])[0]
    np.testing.assert_allclose(p, [0.5, 0.5], atol=1e-6)
    # sample weights 1 for class 0 and 6 for class 1: 30 : 60
    sw = np.where(y == 1, 6.0, 1.0)
    p = HeadClassifier().fit(X, y, sample_weight=sw).predict_proba(X[:1])[0]
    np.testing.assert_allclose(p, [1 / 3, 2 / 3], atol=1e-6)


def test_n_classes_keeps_full_width_for_a_fold_missing_a_class():
    X, y = three_class()
    keep = y != 1
    head = HeadClassifier(n_classes=4).fit(X[keep], y[keep])
    p = head.predict_proba(X)
    assert p.shape == (len(X), 4)
    np.testing.assert_array_equal(head.classes_, [0, 1, 2, 3])
    assert p[:, [1, 3]].max() < 0.01 and set(head.predict(X)) <= {0, 2}
    with pytest.raises(UserError, match=r"integers in \[0, 2\)"):
        HeadClassifier(n_classes=2).fit(X, y)


def test_string_labels():
    X, y = three_class()
    labels = np.array(["cat", "dog", "eel"])[y]
    head = HeadClassifier().fit(X, labels)
    np.testing.assert_array_equal(head.classes_, ["cat", "dog", "eel"])
    assert (head.predict(X) == labels).mean() > 0.6


def test_mlp_learns_what_a_linear_head_cannot_and_is_seeded():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(300, 2))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(int)  # XOR
    lin = HeadClassifier().fit(X, y)
    net = HeadClassifier(kind="mlp", hidden=32, max_iter=300, lr=0.05, weight_decay=1e-4).fit(X, y)
    assert (lin.predict(X) == y).mean() < 0.7
    assert (net.predict(X) == y).mean() > 0.95
    again = HeadClassifier(kind="mlp", hidden=32, max_iter=300, lr=0.05, weight_decay=1e-4).fit(
        X, y
    )
    np.testing.assert_array_equal(net.predict_proba(X), again.predict_proba(X))
    other = clone(again).set_params(seed=1).fit(X, y)
    assert not np.allclose(other.predict_proba(X), net.predict_proba(X))


def test_config_round_trip_and_validation():
    cfg = HeadConfig(kind="mlp", hidden=64, dropout=0.1)
    head = HeadClassifier.from_config(cfg, n_classes=5)
    assert head.config == cfg and head.n_classes == 5
    assert hash(cfg) == hash(HeadConfig(kind="mlp", hidden=64, dropout=0.1))
    with pytest.raises(pydantic.ValidationError):
        HeadConfig(kernel="rbf")
    with pytest.raises(pydantic.ValidationError):
        cfg.hidden = 3  # frozen
    X, y = three_class(n=30)
    with pytest.raises(UserError, match="parameter 'kind' is invalid.*got 'svm'"):
        HeadClassifier(kind="svm").fit(X, y)
    with pytest.raises(UserError, match="parameter 'weight_decay' is invalid"):
        HeadClassifier(weight_decay=-1).fit(X, y)


def test_input_errors():
    X, y = three_class(n=30)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(UserError, match="X contains NaN"):
        HeadClassifier().fit(bad, y)
    with pytest.raises(UserError, match="2-D"):
        HeadClassifier().fit(X[:, 0], y)
    with pytest.raises(UserError, match="one label per sample"):
        HeadClassifier().fit(X, y[:-1])
    with pytest.raises(UserError, match="single class"):
        HeadClassifier().fit(X, np.zeros(30, dtype=int))
    with pytest.raises(UserError, match="sample_weight"):
        HeadClassifier().fit(X, y, sample_weight=-np.ones(30))
    head = HeadClassifier().fit(X, y)
    with pytest.raises(UserError, match="has 5 features but the model was fitted with 6"):
        head.predict(X[:, :5])


def wide(n=60, d=150, seed=1):
    """Fewer samples than features (the triangular path of LinearHeadProblem), 4 classes."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + 40, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    y = (X[:, :8] @ rng.normal(size=(8, 4)) + rng.normal(size=(n + 40, 4))).argmax(1)
    return X[:n], y[:n], X[n:]


def test_lbfgs_solves_a_quadratic_exactly():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(30, 30))
    A, b = M @ M.T + 0.1 * np.eye(30), rng.normal(size=30)
    x, evals = lbfgs(lambda x: (0.5 * x @ A @ x - b @ x, A @ x - b), np.zeros(30), 500, 1e-6, ftol=0.0)
    assert np.abs(A @ x - b).max() <= 1e-6 and evals < 300  # scipy's L-BFGS-B: 158 evaluations
    np.testing.assert_allclose(x, np.linalg.solve(A, b), atol=1e-4)
    x3, capped = lbfgs(lambda x: (0.5 * x @ A @ x - b @ x, A @ x - b), np.zeros(30), 3, 1e-6)
    assert capped <= 1 + 3 * 30 and np.abs(A @ x3 - b).max() > 1e-3  # max_iter caps the iterations


@pytest.mark.parametrize("data", ["tall", "wide"])
@pytest.mark.parametrize("class_weight", ["none", "balanced"])
def test_linear_problem_matches_sklearn(data, class_weight):
    if data == "tall":
        X, y = three_class()
        Xv = X[:60]
    else:
        X, y, Xv = wide()
    wd = 0.05
    prob = LinearHeadProblem(X, y, Xv, int(y.max()) + 1, dtype=np.float64, tol=1e-9)
    assert prob.triangular == (data == "wide")
    p = prob.fit_proba(wd, class_weight=class_weight, max_iter=5000)
    sc = StandardScaler().fit(X)
    ref = LogisticRegression(C=1 / (wd * len(X)), class_weight=None if class_weight == "none" else "balanced",
                             tol=1e-10, max_iter=10_000).fit(sc.transform(X), y)
    np.testing.assert_allclose(p, ref.predict_proba(sc.transform(Xv)), atol=1e-5)
    # float32: rounding alone moves the probabilities by < 2e-4, the default tolerance by < 5e-3
    p32 = LinearHeadProblem(X, y, Xv, int(y.max()) + 1, tol=1e-6).fit_proba(wd, class_weight=class_weight)
    assert np.abs(p32 - p).max() < 2e-4
    p32 = LinearHeadProblem(X, y, Xv, int(y.max()) + 1).fit_proba(wd, class_weight=class_weight)
    assert np.abs(p32 - p).max() < 5e-3


@pytest.mark.parametrize("standardize", [True, False])
def test_linear_problem_matches_head_with_label_smoothing(standardize):
    X, y, Xv = wide()
    head = HeadClassifier(weight_decay=0.1, label_smoothing=0.15, standardize=standardize, tol=1e-10,
                          max_iter=5000).fit(X, y)
    prob = LinearHeadProblem(X, y, Xv, 4, standardize=standardize, dtype=np.float64, tol=1e-9)
    np.testing.assert_allclose(prob.fit_proba(0.1, 0.15, max_iter=5000), head.predict_proba(Xv), atol=2e-5)


def test_linear_problem_warm_starts_from_the_nearest_solution():
    X, y, Xv = wide()
    prob = LinearHeadProblem(X, y, Xv, 4)
    first = prob.fit_proba(0.3)
    cold = prob.n_evals
    again = prob.fit_proba(0.3)  # starts at its own optimum: converged at once
    assert prob.n_evals - cold <= 2 and cold > 10
    np.testing.assert_allclose(again, first, atol=1e-6)
    fresh = LinearHeadProblem(X, y, Xv, 4)
    np.testing.assert_allclose(prob.fit_proba(0.5), fresh.fit_proba(0.5), atol=1e-3)
    with pytest.raises(UserError, match="X_val has 5 features but the model was fitted with 150"):
        LinearHeadProblem(X, y, Xv[:, :5], 4)
