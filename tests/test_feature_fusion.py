"""Feature-level fusion over several feature blocks (transfuse.fuse.features)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from transfuse.config import FeatureFusionConfig, FeatureFusionOptions
from transfuse.errors import UserError
from transfuse.fuse.cv import cross_val_features
from transfuse.fuse.features import FeatureFusionClassifier
from transfuse.train.heads import HeadClassifier


def two_views(n=400, seed=0):
    """4 classes = 2 bits; block A sees only the high bit, block B only the low bit (+ noise
    dims). Each block alone separates pairs of classes but is at chance within a pair (~50%)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    a, b = (y // 2) * 2 - 1, (y % 2) * 2 - 1
    A = np.c_[a + 0.4 * rng.normal(size=n), rng.normal(size=(n, 5))]
    B = np.c_[b + 0.4 * rng.normal(size=n), rng.normal(size=(n, 7))]
    return {"a": A, "b": B}, y


def acc(model, blocks, y):
    return float((model.predict(blocks) == y).mean())


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"proj_dim": 4},
        {"gate": True},
        {"proj_dim": 4, "gate": True},
        {"head": "mlp", "hidden": 32},
    ],
)
def test_fusion_beats_each_single_block(params):
    train, y = two_views()
    test, yt = two_views(seed=1)
    singles = [acc(HeadClassifier().fit(train[k], y), test[k], yt) for k in ("a", "b")]
    fused = acc(FeatureFusionClassifier(**params).fit(train, y), test, yt)
    assert max(singles) < 0.6  # each block alone: chance within each pair of classes
    assert fused > 0.95


def test_plain_fusion_equals_a_head_on_the_concatenation():
    # no projection, no gate, linear head: the same convex problem as one head on [A | B]
    train, y = two_views()
    test, _ = two_views(seed=1)
    fused = FeatureFusionClassifier(tol=1e-10).fit(train, y)
    head = HeadClassifier(tol=1e-10).fit(np.c_[train["a"], train["b"]], y)
    np.testing.assert_allclose(
        fused.predict_proba(test), head.predict_proba(np.c_[test["a"], test["b"]]), atol=1e-4
    )


def test_deterministic_and_seeded():
    train, y = two_views(n=200)
    params = dict(proj_dim=8, gate=True, head="mlp", hidden=16, dropout=0.2, max_iter=60)
    p1 = FeatureFusionClassifier(**params).fit(train, y).predict_proba(train)
    p2 = FeatureFusionClassifier(**params).fit(train, y).predict_proba(train)
    np.testing.assert_array_equal(p1, p2)
    p3 = FeatureFusionClassifier(**params, seed=1).fit(train, y).predict_proba(train)
    assert not np.allclose(p1, p3)


def test_block_order_names_and_lists():
    train, y = two_views(n=200)
    model = FeatureFusionClassifier().fit(train, y)
    assert model.block_names_ == ["a", "b"] and model.block_dims_ == [6, 8]
    swapped = {"b": train["b"], "a": train["a"]}
    np.testing.assert_array_equal(model.predict_proba(swapped), model.predict_proba(train))
    as_list = FeatureFusionClassifier().fit([train["a"], train["b"]], y)
    assert as_list.block_names_ == ["0", "1"]
    np.testing.assert_allclose(
        as_list.predict_proba([train["a"], train["b"]]), model.predict_proba(train)
    )


def test_gate_prefers_the_informative_block():
    train, y = two_views()
    rng = np.random.default_rng(0)
    good = np.c_[train["a"][:, :1], train["b"][:, :1]]  # solves the task alone
    blocks = {"good": good, "noise": rng.normal(size=(len(y), 8))}
    model = FeatureFusionClassifier(gate=True).fit(blocks, y)
    g = model.gate_weights(blocks)
    assert g.shape == (len(y), 2)
    np.testing.assert_allclose(g.sum(1), 1.0, atol=1e-9)
    assert g[:, 0].mean() > 0.8
    with pytest.raises(UserError, match="gate=True"):
        FeatureFusionClassifier().fit(blocks, y).gate_weights(blocks)


def test_n_classes_and_cross_val_features():
    train, y = two_views(n=200)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    res = cross_val_features(FeatureFusionClassifier(), train, y, folds)
    assert len(res["cv_scores"]) == 4 and res["cv_mean"] > 0.9
    assert res["oof_probs"].shape == (200, 4) and not np.isnan(res["oof_probs"]).any()
    keep = y != 3
    model = FeatureFusionClassifier(n_classes=4).fit(
        {k: v[keep] for k, v in train.items()}, y[keep]
    )
    assert model.predict_proba(train).shape == (200, 4)


def test_errors_name_the_problem():
    train, y = two_views(n=50)
    with pytest.raises(UserError, match="dict .* or a list"):
        FeatureFusionClassifier().fit(train["a"], y)
    with pytest.raises(UserError, match="blocks is empty"):
        FeatureFusionClassifier().fit({}, y)
    with pytest.raises(UserError, match="different numbers of rows"):
        FeatureFusionClassifier().fit({"a": train["a"], "b": train["b"][:40]}, y)
    with pytest.raises(UserError, match="parameter 'proj_dim' is invalid"):
        FeatureFusionClassifier(proj_dim=0).fit(train, y)
    bad = train["b"].copy()
    bad[3, 1] = np.inf
    with pytest.raises(UserError, match="block 'b' contains NaN or infinite"):
        FeatureFusionClassifier().fit({"a": train["a"], "b": bad}, y)
    model = FeatureFusionClassifier().fit(train, y)
    with pytest.raises(
        UserError, match=r"blocks \['a', 'c'\] do not match the fitted blocks \['a', 'b'\]"
    ):
        model.predict({"a": train["a"], "c": train["b"]})
    with pytest.raises(UserError, match="block 'b' has 7 features but the model was fitted with 8"):
        model.predict({"a": train["a"], "b": train["b"][:, :7]})


def test_defaults_come_from_the_config_and_the_section_builds_the_estimator():
    assert FeatureFusionClassifier().config == FeatureFusionConfig()
    fo = FeatureFusionOptions(proj_dim=8, gate=True, label_smoothing=0.1)
    est = FeatureFusionClassifier(**fo.model_dump(exclude={"enabled"}))
    assert est.config == FeatureFusionConfig(proj_dim=8, gate=True, label_smoothing=0.1)
    assert clone(est).get_params() == est.get_params()
