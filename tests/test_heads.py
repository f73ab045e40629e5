"""Fast heads on cached features (transfuse.train.heads)."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from transfuse.config import HeadConfig
from transfuse.errors import UserError
from transfuse.train.heads import (
    HeadClassifier,
    LinearHeadProblem,
    class_weights,
    lbfgs,
    smoothed_ce,
)


def three_class(n=240, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    z = X @ rng.normal(size=(d, 3)) + rng.normal(scale=2.0, size=(n, 3))
    return X, z.argmax(1)


# ----------------------------------------------------------------------------- distance to the optimum
# Two fits of one objective L (transfuse.train.heads's docstring) are compared at the precision their
# distance to the optimum allows, measured at the fitted parameters theta: which stopping rule ends
# an L-BFGS fit (small gradient, small change of L, small step, float rounding) depends on the
# machine, so the achieved precision is measured, not assumed. With g the gradient of L at theta and
# H+ the pseudo-inverse of its Hessian (adding one constant to every bias changes nothing), to first
# order theta = theta* + H+ g, so
#   gap := L(theta) - L* = g' H+ g / 2   and   p_c(x) - p*_c(x) = a' H+ g,  a = dp_c(x)/dtheta,
# where |a' H+ g| <= sqrt(a' H+ a) * sqrt(2 gap) (Cauchy-Schwarz in the H+ metric). Two fits thus
# agree within sqrt(a' H+ a) * (sqrt(2 gap_1) + sqrt(2 gap_2)), plus 10% for the second-order terms
# (under 1% here). The gaps must be small too, else both fits may solve different problems (a fit
# without the other's label smoothing sits ~0.1 above its optimum): a float64 fit stops at the
# latest when a step lowers L by less than tol / 100 (LinearHeadProblem: by 64 eps relatively), and
# with L-BFGS slowing down near the optimum its gap ends below 1000x that: gap < 10 tol
# (measured: < 1e-11 for tol = 1e-10).


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def objective_terms(Z, y, theta, wd, eps=0.0, class_weight="none", sample_weight=None):
    """Gradient (flat) and Hessian of L at ``theta = [W | b]`` (rows: classes) on features ``Z``."""
    n, d = Z.shape
    c = theta.shape[0]
    Zb = np.c_[Z, np.ones(n)]
    P = softmax(Zb @ theta.T)
    Q = np.full((n, c), eps / c)
    Q[np.arange(n), y] += 1 - eps
    s = np.ones(n) if sample_weight is None else sample_weight
    w = s * class_weights(y, c, class_weight)[y] / s.sum()
    g = ((P - Q) * w[:, None]).T @ Zb
    g[:, :d] += wd * theta[:, :d]
    A = (P[:, :, None] * np.eye(c) - P[:, :, None] * P[:, None, :]) * w[:, None, None]
    H = np.einsum("iab,ij,ik->ajbk", A, Zb, Zb, optimize=True).reshape(c * (d + 1), c * (d + 1))
    H += wd * np.diag(np.tile(np.r_[np.ones(d), 0.0], c))
    return g.ravel(), H


def certify(Z, y, Z_eval, thetas, wd, eps=0.0, class_weight="none", sample_weight=None):
    """``(gaps, bound, mu)``: each fit's gap, the bound on how far the fits' probabilities on
    ``Z_eval`` may differ (the optimum counts as a fit with gap 0), and the smallest curvature."""
    terms = [objective_terms(Z, y, t, wd, eps, class_weight, sample_weight) for t in thetas]
    with threadpool_limits(1):  # threaded BLAS on a busy small machine: 100x slower
        lam, U = np.linalg.eigh(terms[0][1])
    keep = lam > 1e-12 * lam[-1]  # drop the directions that change nothing (a common bias shift)
    Hp = (U[:, keep] / lam[keep]) @ U[:, keep].T
    gaps = [max(float(g @ Hp @ g) / 2, 0.0) for g, _ in terms]
    c, dd = thetas[0].shape
    Vb = np.c_[Z_eval, np.ones(len(Z_eval))]
    P = softmax(Vb @ thetas[0].T)
    S = np.einsum("vj,ajbk,vk->vab", Vb, Hp.reshape(c, dd, c, dd), Vb, optimize=True)
    M = P[:, :, None] * (np.eye(c) - P[:, None, :])  # M[v, c, k] = dp_c / dz_k
    lev = np.sqrt(np.maximum(np.einsum("vck,vkl,vcl->vc", M, S, M), 0.0))
    return gaps, 1.1 * lev * sum(np.sqrt(2 * g) for g in gaps), float(lam[keep][0])


def head_theta(head: HeadClassifier) -> np.ndarray:
    return np.c_[head.net_.weight.detach().double().numpy(), head.net_.bias.detach().double().numpy()]


def problem_theta(prob: LinearHeadProblem, Xs: np.ndarray, k: int = -1) -> np.ndarray:
    """The ``k``-th solution of ``prob`` on the (standardised) features ``Xs``, undoing the
    triangular basis ``X = R' Q'`` (``prob.Z = Xs @ Q``)."""
    theta = prob._solutions[k][1].reshape(prob.n_classes, -1)
    if not prob.triangular:
        return theta
    basis = np.linalg.qr(Xs.T)[0]
    np.testing.assert_allclose(Xs @ basis, prob.Z, atol=1e-9)
    return np.c_[theta[:, :-1] @ basis.T, theta[:, -1]]


@pytest.mark.parametrize("standardize", [True, False])
def test_linear_head_matches_sklearn_logistic_regression(standardize):
    X, y = three_class()
    wd = 1e-2
    head = HeadClassifier(weight_decay=wd, standardize=standardize, tol=1e-10).fit(X, y)
    Xs = StandardScaler().fit_transform(X) if standardize else X
    # sklearn minimises C * sum(CE) + ||W||^2 / 2 == n*C * (mean CE + ||W||^2 / (2 n C))
    ref = LogisticRegression(C=1 / (wd * len(X)), tol=1e-10, max_iter=10_000).fit(Xs, y)
    gaps, bound, _ = certify(Xs, y, Xs, [head_theta(head), np.c_[ref.coef_, ref.intercept_]], wd)
    assert max(gaps) < 10 * 1e-10
    p, p_ref = head.predict_proba(X), ref.predict_proba(Xs)
    assert (np.abs(p - p_ref) <= bound).all()
    top2 = np.sort(p_ref, axis=1)[:, -2:]
    sure = top2[:, 1] - top2[:, 0] > 2 * bound.max()  # the argmax cannot flip within the bound
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(head.predict(X)[sure], ref.predict(Xs)[sure])


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
    gaps, bound, _ = certify(X, y, X, [head_theta(head)], 0.0, eps=0.3)
    assert gaps[0] < 10 * 1e-7
    assert (np.abs(head.predict_proba(X) - expected) <= bound).all()


def test_class_and_sample_weights_shift_the_prior():
    # constant features: only the bias can learn, so p equals the (weighted) class frequencies
    # (gap < 10 tol and the bound on |p - p*| it implies: see certify)
    y = np.array([0] * 30 + [1] * 10)
    X = np.zeros((40, 2))
    sw = np.where(y == 1, 6.0, 1.0)
    for kw, fit_kw, expected in [
        ({}, {}, [0.75, 0.25]),
        # balanced: weight n / (C * n_c) = 40/60 for class 0, 40/20 for class 1 -> 20 : 20
        ({"class_weight": "balanced"}, {}, [0.5, 0.5]),
        # sample weights 1 for class 0 and 6 for class 1: 30 : 60
        ({}, {"sample_weight": sw}, [1 / 3, 2 / 3]),
    ]:
        head = HeadClassifier(**kw).fit(X, y, **fit_kw)
        gaps, bound, _ = certify(X, y, X[:1], [head_theta(head)], head.weight_decay,
                                 class_weight=head.class_weight, sample_weight=fit_kw.get("sample_weight"))
        assert gaps[0] < 10 * head.tol
        assert (np.abs(head.predict_proba(X[:1]) - expected) <= bound).all()


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
    assert HeadClassifier().config == HeadConfig()  # the estimator's defaults are the config's
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
    # ||x - x*|| = ||A^-1 (A x - b)|| <= sqrt(30) * 1e-6 / lambda_min(A), and lambda_min(A) >= 0.1
    assert np.linalg.norm(x - np.linalg.solve(A, b)) <= np.sqrt(30) * 1e-6 / 0.1
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
    wd, c = 0.05, int(y.max()) + 1
    prob = LinearHeadProblem(X, y, Xv, c, dtype=np.float64, tol=1e-9)
    assert prob.triangular == (data == "wide")
    p = prob.fit_proba(wd, class_weight=class_weight, max_iter=5000)
    sc = StandardScaler().fit(X)
    Xs, Xvs = sc.transform(X), sc.transform(Xv)
    ref = LogisticRegression(C=1 / (wd * len(X)), class_weight=None if class_weight == "none" else "balanced",
                             tol=1e-10, max_iter=10_000).fit(Xs, y)
    theta = problem_theta(prob, Xs)
    gaps, bound, mu = certify(Xs, y, Xvs, [theta, np.c_[ref.coef_, ref.intercept_]], wd,
                              class_weight=class_weight)
    assert max(gaps) < 10 * 1e-9
    assert (np.abs(p - ref.predict_proba(Xvs)) <= bound).all()
    # float32: the fit stops at max |g| <= tol, or near max |g| ~ 1e-5 where float32 rounding of the
    # logits (7 digits of sums of ~10 terms) hides further progress (measured: up to 6e-6); with
    # ||g||^2 <= n_params * max|g|^2 and g' H+ g <= ||g||^2 / mu, gap <= n_params max(tol, 1e-5)^2 / (2 mu).
    # The probabilities then move by ~1e-4 (tol = 1e-6) and a few 1e-3 (default tol = 1e-4).
    for tol in (1e-6, 1e-4):
        fast = LinearHeadProblem(X, y, Xv, c, tol=tol)
        p32 = fast.fit_proba(wd, class_weight=class_weight)
        gaps, bound, _ = certify(Xs, y, Xvs, [theta, problem_theta(fast, Xs)], wd, class_weight=class_weight)
        assert gaps[1] <= theta.size * max(tol, 1e-5) ** 2 / (2 * mu)
        assert (np.abs(p32 - p) <= bound).all()


@pytest.mark.parametrize("standardize", [True, False])
def test_linear_problem_matches_head_with_label_smoothing(standardize):
    X, y, Xv = wide()
    head = HeadClassifier(weight_decay=0.1, label_smoothing=0.15, standardize=standardize, tol=1e-10,
                          max_iter=5000).fit(X, y)
    prob = LinearHeadProblem(X, y, Xv, 4, standardize=standardize, dtype=np.float64, tol=1e-9)
    p = prob.fit_proba(0.1, 0.15, max_iter=5000)
    Xs, Xvs = (X - head.mean_) / head.scale_, (Xv - head.mean_) / head.scale_
    gaps, bound, _ = certify(Xs, y, Xvs, [head_theta(head), problem_theta(prob, Xs)], 0.1, eps=0.15)
    assert max(gaps) < 10 * 1e-10  # a fit without the label smoothing: ~0.1
    assert (np.abs(p - head.predict_proba(Xv)) <= bound).all()


def test_linear_problem_warm_starts_from_the_nearest_solution():
    X, y, Xv = wide()
    prob = LinearHeadProblem(X, y, Xv, 4)
    first = prob.fit_proba(0.3)
    cold = prob.n_evals
    again = prob.fit_proba(0.3)  # starts at its own optimum: converged at once
    assert prob.n_evals - cold <= 2 and cold > 10
    fresh = LinearHeadProblem(X, y, Xv, 4)
    warm, cold05 = prob.fit_proba(0.5), fresh.fit_proba(0.5)
    # each pair solves one objective: they agree within what their gaps allow (see certify); the
    # float32 fits reach max |g| <= tol = 1e-4 (see test_linear_problem_matches_sklearn)
    mean, std = X.mean(axis=0), X.std(axis=0)
    Xs, Xvs = (X - mean) / std, (Xv - mean) / std
    thetas = [problem_theta(prob, Xs, k) for k in range(3)] + [problem_theta(fresh, Xs, 0)]
    for wd, (i, j), (pa, pb) in [(0.3, (0, 1), (first, again)), (0.5, (2, 3), (warm, cold05))]:
        gaps, bound, mu = certify(Xs, y, Xvs, [thetas[i], thetas[j]], wd)
        assert max(gaps) <= thetas[i].size * 1e-4**2 / (2 * mu)
        assert (np.abs(pa - pb) <= bound).all()
    with pytest.raises(UserError, match="X_val has 5 features but the model was fitted with 150"):
        LinearHeadProblem(X, y, Xv[:, :5], 4)
