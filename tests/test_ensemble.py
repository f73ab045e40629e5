"""Prediction-level fusion (transfuse.fuse.ensemble) and its nested CV (transfuse.fuse.cv)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import StackingClassifier
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transfuse.errors import UserError
from transfuse.fuse.cv import align_members, cross_val_fusion, screen_members
from transfuse.fuse.ensemble import (
    ENSEMBLES,
    GreedyEnsemble,
    MeanEnsemble,
    StackingEnsemble,
    WeightedEnsemble,
    accuracy,
    log_loss,
)


def noisy_members(n=120, c=3, m=3, seed=0):
    """Members that are informative but noisy: softmax(onehot(y) * strength + noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    P = []
    for k in range(m):
        z = 1.5 * np.eye(c)[y] + rng.normal(scale=1.0 + 0.5 * k, size=(n, c))
        e = np.exp(z)
        P.append(e / e.sum(1, keepdims=True))
    return np.stack(P), y


def binary(t):
    """Members from a table of 'probability of class 0' rows."""
    return np.stack([np.c_[row, 1 - np.asarray(row)] for row in t])


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", ENSEMBLES.names())
def test_contract(name):
    P, y = noisy_members()
    est = ENSEMBLES.get(name)()
    assert est.fit(P, y) is est
    p = est.predict_proba(list(P))  # a list of (n, C) is accepted too
    assert p.shape == (120, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(est.predict(P), p.argmax(1))
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    assert est.n_members_ == 3
    assert clone(est).get_params() == est.get_params()
    assert "http" in (ENSEMBLES.get(name).__doc__ or "")  # each carries its paper reference
    # a fusion of informative members beats the average member on log-loss
    assert log_loss(p, y) < np.mean([log_loss(P[k], y) for k in range(3)])


def test_registry_names_and_miss():
    assert ENSEMBLES.names() == ["greedy", "mean", "stacking", "weighted"]
    with pytest.raises(UserError, match="valid names: greedy, mean, stacking, weighted"):
        ENSEMBLES.get("voting")


@pytest.mark.parametrize("cls", [WeightedEnsemble, GreedyEnsemble, StackingEnsemble])
def test_unfitted_raises(cls):
    P, _ = noisy_members()
    with pytest.raises(NotFittedError, match="not fitted"):
        cls().predict_proba(P)


def test_bad_inputs():
    P, y = noisy_members()
    with pytest.raises(UserError, match="differ in shape"):
        MeanEnsemble().fit([P[0], P[1][:10]], y)
    bad = P.copy()
    bad[1, 5, 0] = np.nan
    with pytest.raises(UserError, match=r"member\(s\) \[1\] have NaN"):
        WeightedEnsemble().fit(bad, y)
    with pytest.raises(UserError, match="sum to 1"):
        MeanEnsemble().fit(P * 2, y)
    with pytest.raises(UserError, match=r"class indices in \[0, 3\)"):
        MeanEnsemble().fit(P, y + 1)
    with pytest.raises(UserError, match="shape"):
        MeanEnsemble().fit(P[0], y)
    fitted = WeightedEnsemble().fit(P, y)
    with pytest.raises(UserError, match="fitted on 3"):
        fitted.predict_proba(P[:2])
    with pytest.raises(UserError, match="non-negative"):
        WeightedEnsemble(weights=[1, -1, 1]).predict_proba(P)


# ----------------------------------------------------------------------------- golden numbers


def test_mean_is_the_average():
    P = binary([[0.9, 0.2], [0.5, 0.6], [0.1, 0.7]])
    np.testing.assert_allclose(MeanEnsemble().predict_proba(P)[:, 0], [0.5, 0.5])
    np.testing.assert_allclose(MeanEnsemble().fit(P, [0, 1]).weights_, [1 / 3] * 3)


def test_weighted_two_members_matches_1d_search():
    P, y = noisy_members(m=2, seed=3)
    w = WeightedEnsemble().fit(P, y).weights_
    # independent: minimise the log-loss over the single free weight a in [0, 1]
    res = minimize_scalar(
        lambda a: log_loss(a * P[0] + (1 - a) * P[1], y),
        bounds=(0, 1),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert 0 < res.x < 1
    np.testing.assert_allclose(w, [res.x, 1 - res.x], atol=1e-5)


def test_weighted_weights_are_a_convex_combination():
    P, y = noisy_members(m=5, seed=1)
    est = WeightedEnsemble().fit(P, y)
    assert (est.weights_ >= 0).all() and est.weights_.sum() == pytest.approx(1.0, abs=1e-12)
    # every single member is a feasible point, so the optimum is at least as good as each
    assert est.loss_ <= min(log_loss(P[k], y) for k in range(5)) + 1e-9
    np.testing.assert_allclose(est.predict_proba(P), np.tensordot(est.weights_, P, axes=1))


def test_weighted_prefit_weights_need_no_fit():
    P, y = noisy_members(m=2)
    est = WeightedEnsemble(weights=[1, 3])
    np.testing.assert_allclose(est.predict_proba(P), 0.25 * P[0] + 0.75 * P[1])
    np.testing.assert_allclose(est.fit(P, y).weights_, [0.25, 0.75])  # fit keeps given weights


def test_greedy_picks_the_hand_computed_sequence():
    # probability of the true class (class 0) per member on 4 rows
    table = [[0.9, 0.9, 0.3, 0.6], [0.4, 0.5, 0.9, 0.8], [0.6, 0.6, 0.6, 0.6], [0.2, 0.2, 0.2, 0.2]]
    P, y = binary(table), np.zeros(4, dtype=int)
    # step 1 log-losses: M0 (2*0.1054+1.2040+0.5108)/4=0.4814, M1 0.4845, M2 0.5108, M3 1.6094 -> M0
    # step 2 {M0}+M1: mean p = [.65,.7,.6,.7] -> 0.4137 (M0: 0.4814, M2: 0.4712) -> M1
    # step 3 {M0,M1}+M0: [.733,.767,.5,.667] -> 0.4186 (M1: 0.4229, M2: 0.4446) -> M0
    # step 4 {M0,M1,M0}+M1: [.65,.7,.6,.7] -> 0.4137 (M0: 0.4268) -> M1; step 5 -> M0 (0.4149)
    est = GreedyEnsemble(n_iter=5).fit(P, y)
    assert est.selection_ == [0, 1, 0, 1, 0]
    np.testing.assert_allclose(est.weights_, [0.6, 0.4, 0.0, 0.0])
    np.testing.assert_allclose(est.predict_proba(P), np.tensordot(est.weights_, P, axes=1))
    # n_init=2 starts from the two best singles (M0, M1), then adds M0 (0.4186) and M1
    assert GreedyEnsemble(n_iter=2, n_init=2).fit(P, y).selection_ == [0, 1, 0, 1]


def test_greedy_accuracy_metric_and_errors():
    P, y = noisy_members(m=4)
    est = GreedyEnsemble(n_iter=10, metric="accuracy").fit(P, y)
    assert len(est.selection_) == 10 and est.weights_.sum() == pytest.approx(1.0)
    assert accuracy(est.predict_proba(P), y) >= max(accuracy(P[k], y) for k in range(4))
    with pytest.raises(UserError, match="'log_loss' or 'accuracy'"):
        GreedyEnsemble(metric="auc").fit(P, y)
    with pytest.raises(UserError, match="n_init <= 4"):
        GreedyEnsemble(n_init=5).fit(P, y)


class _Lookup(ClassifierMixin, BaseEstimator):
    """A 'model trained elsewhere': returns a fixed probability table row per row-index feature."""

    def __init__(self, table=None):
        self.table = table

    def fit(self, X, y):
        self.classes_ = np.arange(self.table.shape[1])
        return self

    def predict_proba(self, X):
        return self.table[np.asarray(X)[:, 0].astype(int)]


def test_stacking_equals_sklearn_stacking_prefit():
    P, y = noisy_members(m=3, seed=2)
    X = np.arange(len(y))[:, None]
    members = [(f"m{k}", _Lookup(P[k]).fit(X, y)) for k in range(3)]
    ref = StackingClassifier(
        members,
        final_estimator=LogisticRegression(C=0.7, max_iter=1000),
        cv="prefit",
        stack_method="predict_proba",
    ).fit(X, y)
    ours = StackingEnsemble(C=0.7, features="proba", standardize=False).fit(P, y)
    np.testing.assert_allclose(ours.predict_proba(P), ref.predict_proba(X), atol=1e-6)


def test_stacking_inner_cv_choice_matches_independent_cv():
    P, y = noisy_members(m=2, seed=4)
    est = StackingEnsemble(Cs=(0.01, 1.0), cv=3, seed=7).fit(P, y)
    F = np.concatenate([np.log(P[0]), np.log(P[1])], axis=1)
    skf = StratifiedKFold(3, shuffle=True, random_state=7)
    for C in (0.01, 1.0):
        meta = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
        p = cross_val_predict(meta, F, y, cv=skf, method="predict_proba")
        assert est.cv_losses_[C] == pytest.approx(log_loss(p, y), rel=1e-5)
    assert est.C_ == min(est.cv_losses_, key=est.cv_losses_.get)


def test_stacking_prefit_meta_learner():
    P, y = noisy_members(m=2)
    meta = LogisticRegression().fit(np.concatenate(list(P), axis=1), y)
    est = StackingEnsemble(features="proba", standardize=False, meta_learner=meta)
    np.testing.assert_allclose(est.predict_proba(P), meta.predict_proba(np.concatenate(list(P), 1)))


# ----------------------------------------------------------------------------- nested CV


def _folds(y, k=5):
    return list(StratifiedKFold(k, shuffle=True, random_state=0).split(np.zeros(len(y)), y))


@pytest.mark.parametrize(
    ("method", "params"),
    [("greedy", {}), ("weighted", {}), ("stacking", {"C": 10.0})],
)
def test_nested_cv_is_honest_where_in_sample_is_optimistic(method, params):
    rng = np.random.default_rng(0)
    n, c = 150, 3
    y = rng.integers(0, c, n)
    members = {f"m{k}": rng.dirichlet(np.full(c, 0.5), size=n) for k in range(40)}  # all useless
    res = cross_val_fusion(method, members, y, _folds(y), **params)
    P = np.stack(list(members.values()))
    in_sample = accuracy(ENSEMBLES.get(method)(**params).fit(P, y).predict_proba(P), y)
    assert res["cv_mean"] < 1 / c + 0.06  # nested: about chance, as it should be
    assert in_sample > res["cv_mean"] + 0.1  # fitting on the scored rows looks better than it is


def test_cross_val_fusion_outputs_and_refit():
    P, y = noisy_members(n=100, m=3)
    members = {"a": P[0], "b": P[1], "c": P[2]}
    folds = _folds(y, 4)
    res = cross_val_fusion("weighted", members, y, folds)
    assert res["members"] == ["a", "b", "c"] and len(res["cv_scores"]) == 4
    # each fold's score is the fold-fitted fusion scored on that fold only
    tr, va = folds[1]
    est = WeightedEnsemble().fit(P[:, tr], y[tr])
    assert res["cv_scores"][1] == pytest.approx(accuracy(est.predict_proba(P[:, va]), y[va]))
    np.testing.assert_allclose(res["oof_probs"][va], est.predict_proba(P[:, va]))
    assert res["cv_mean"] == pytest.approx(np.mean(res["cv_scores"]))
    assert res["log_loss"] == pytest.approx(log_loss(res["oof_probs"], y))
    np.testing.assert_allclose(res["estimator"].weights_, WeightedEnsemble().fit(P, y).weights_)
    # an estimator instance works too (cloned, so the caller's object stays unfitted)
    proto = GreedyEnsemble(n_iter=3)
    assert cross_val_fusion(proto, members, y, folds, refit=False)["cv_mean"] > 0
    assert not hasattr(proto, "weights_")


def test_cross_val_fusion_bad_folds():
    P, y = noisy_members(n=20, m=2)
    members = {"a": P[0], "b": P[1]}
    with pytest.raises(UserError, match="overlap"):
        cross_val_fusion(
            "mean",
            members,
            y,
            [(np.arange(10), np.arange(5, 15)), (np.arange(10), np.arange(10, 20))],
        )
    with pytest.raises(UserError, match="at least 2 folds"):
        cross_val_fusion("mean", members, y, [(np.arange(10), np.arange(10, 20))])
    with pytest.raises(UserError, match="one label per OOF row"):
        cross_val_fusion("mean", members, y[:5], _folds(y, 2))


def test_screen_and_align_members():
    P, _ = noisy_members(n=10, m=2)
    nan = P[1].copy()
    nan[[2, 4], 0] = np.nan
    kept, excluded = screen_members({"good": P[0], "nan": nan, "short": P[0][:5]})
    assert list(kept) == ["good"]
    assert excluded == {
        "nan": "2 rows hold NaN/inf probabilities",
        "short": "shape (5, 3) differs from the other members' (10, 3)",
    }
    aligned = align_members({"x": (["b", "c", "a"], P[0])}, ["a", "b", "c"])
    np.testing.assert_array_equal(aligned["x"], P[0][:, [2, 0, 1]])
    with pytest.raises(UserError, match=r"candidate 'x' .* missing \['c'\], extra \['d'\]"):
        align_members({"x": (["a", "b", "d"], P[0])}, ["a", "b", "c"])
