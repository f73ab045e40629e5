"""Golden numbers (by hand) for every merge method, and contract tests generated from the registry."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from transfuse.errors import UserError
from transfuse.fuse.merge import METHODS, TensorContext, blocks, get_method, merge_method

T = torch.tensor


def run(name, tensors, base=None, ctx=None, extras=None, **params):
    return get_method(name)(tensors, base, ctx=ctx, extras=extras, **params)


# ---------------------------------------------------------------- golden numbers, by hand
def test_linear_weighted_and_unnormalized():
    xs = [T([1.0, 2.0]), T([3.0, 6.0])]
    assert torch.allclose(run("linear", xs, weight=[1, 3]), T([2.5, 5.0]))
    assert torch.allclose(run("linear", xs, weight=[1, 3], normalize=False), T([10.0, 20.0]))
    assert torch.allclose(run("linear", xs), T([2.0, 4.0]))  # uniform soup


def test_linear_zero_weight_sum_is_a_user_error():
    with pytest.raises(UserError, match="weights sum to 0"):
        run("linear", [T([1.0]), T([2.0])], weight=[1, -1])


def test_task_arithmetic():
    base = T([1.0, 1.0])
    xs = [T([2.0, 0.0]), T([1.0, 3.0])]  # deltas [1,-1], [0,2]
    out = run("task_arithmetic", xs, base, weight=[1.0, 0.5], **{"lambda": 2.0})
    assert torch.allclose(out, T([3.0, 1.0]))  # 1 + 2*(1 + 0), 1 + 2*(-1 + 1)


TIES_XS = [T([3.0, -1.0, 2.0, -0.5]), T([-2.0, 4.0, 1.0, -1.0]), T([1.0, -3.0, -0.2, 0.1])]


def test_ties_trim_elect_disjoint_mean():
    # trim to 2 of 4: [3,0,2,0], [-2,4,0,0], [1,-3,0,0]; elected signs (sums 2, 1, 2, 0): + + + +
    out = run("ties", TIES_XS, torch.zeros(4), density=0.5)
    assert torch.allclose(out, T([2.0, 4.0, 2.0, 0.0]))  # means of agreeing entries: (3+1)/2, 4, 2
    out = run("ties", TIES_XS, torch.zeros(4), density=0.5, normalize=False)
    assert torch.allclose(out, T([4.0, 4.0, 2.0, 0.0]))


def test_ties_weights_enter_the_election_and_the_divisor():
    # weights [1, 2, 1]: weighted trimmed [3,0,2,0], [-4,8,0,0], [1,-3,0,0]; pos 0 sums to 0 -> +
    out = run("ties", TIES_XS, torch.zeros(4), density=0.5, weight=[1, 2, 1])
    assert torch.allclose(out, T([2.0, 4.0, 2.0, 0.0]))  # (3+1)/(1+1), 8/2, 2/1, none -> 0
    out = run("ties", TIES_XS, torch.full((4,), 10.0), density=1.0, weight=[1, 1, 1],
              **{"lambda": 0.5})  # no trim: deltas are the xs minus 10
    d = torch.stack(TIES_XS) - 10  # all negative -> elected -, every entry agrees
    assert torch.allclose(out, 10 + 0.5 * d.mean(0))


def test_top_k_mask_exact_count_with_ties():
    m = blocks.top_k_mask(T([1.0, 2.0, 2.0, 2.0, 0.5]), 2)
    assert m.tolist() == [False, True, True, False, False]  # ties at the threshold: first come


def test_breadcrumbs_drops_outliers_and_small():
    x = torch.arange(1, 11, dtype=torch.float32) / 10  # 0.1 .. 1.0
    out = run("breadcrumbs", [x], torch.zeros(10), density=0.5, gamma=0.1)
    # n=10: keep 5, drop the top 1 (1.0) and the bottom 4 (0.1..0.4)
    assert torch.allclose(out, T([0, 0, 0, 0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.0]))


def test_breadcrumbs_gamma_zero_keeps_the_top():
    x = T([0.1, -0.4, 0.3, 0.2])
    out = run("breadcrumbs", [x], torch.zeros(4), density=0.5, gamma=0.0)
    assert torch.allclose(out, T([0.0, -0.4, 0.3, 0.0]))


def test_breadcrumbs_ties_elects_signs():
    x1 = T([1.0, 2.0, 3.0, 100.0])
    x2 = T([-5.0, -1.0, 1.0, 0.5])
    # n=4, gamma .25, density .5: drop the top 1 and the bottom 1 -> [0,2,3,0] and [0,-1,1,0]
    out = run("breadcrumbs_ties", [x1, x2], torch.zeros(4), density=0.5, gamma=0.25)
    assert torch.allclose(out, T([0.0, 2.0, 4.0, 0.0]))  # pos 1: sum +1 elects +, -1 dropped


def test_dare_mask_and_rescale_from_the_seed():
    torch.manual_seed(0)
    base = torch.randn(64)
    xs = [base + torch.randn(64), base + torch.randn(64)]
    ctx = TensorContext("layer.0.weight", ("a", "b"), seed=7)
    out = run("dare_linear", xs, base, ctx=ctx, density=0.3, weight=[0.5, 2.0])
    expected = base.clone()
    for x, w, name in zip(xs, [0.5, 2.0], ["a", "b"]):
        d = x - base
        mask = blocks.random_mask(d.shape, 0.3, blocks.stable_seed(7, "layer.0.weight", name))
        kept = d * mask
        expected += w * kept * (d.abs().sum() / kept.abs().sum())  # l1-preserving rescale
    assert torch.allclose(out, expected, atol=1e-6)


def test_dare_mask_depends_on_tensor_name_model_and_seed_not_order():
    kw = dict(density=0.5)
    base = torch.zeros(1000)
    xs = [torch.ones(1000), 2 * torch.ones(1000)]
    a = run("dare_linear", xs, base, ctx=TensorContext("w", ("m1", "m2")), **kw)
    b = run("dare_linear", xs[::-1], base, ctx=TensorContext("w", ("m2", "m1")), **kw)
    assert torch.equal(a, b)
    c = run("dare_linear", xs, base, ctx=TensorContext("other", ("m1", "m2")), **kw)
    d = run("dare_linear", xs, base, ctx=TensorContext("w", ("m1", "m2"), seed=1), **kw)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    kept = blocks.random_mask(torch.Size([20000]), 0.3, 123).float().mean()
    assert abs(kept - 0.3) < 0.02


def test_stable_seed_is_the_same_in_another_process():
    code = ("from transfuse.fuse.merge.blocks import stable_seed;"
            "print(stable_seed(0, 'enc.w', 'a'))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": s}, check=True).stdout for s in ("1", "2")}
    assert outs == {f"{blocks.stable_seed(0, 'enc.w', 'a')}\n"}


def test_dare_ties_drops_disagreeing_signs():
    base = torch.zeros(3)
    xs = [T([1.0, -2.0, 3.0]), T([-4.0, 1.0, 1.0])]
    out = run("dare_ties", xs, base, ctx=TensorContext("w", ("a", "b")), density=1.0)
    assert torch.allclose(out, T([-4.0, -2.0, 4.0]))  # sums -3,-1,4 -> signs -,-,+ ; no normalize


@pytest.mark.parametrize("t,expected", [(0.0, [1.0, 0.0]), (1.0, [0.0, 2.0]),
                                        (0.5, [math.sqrt(0.5), 2 * math.sqrt(0.5)])])
def test_slerp_orthogonal(t, expected):
    out = run("slerp", [T([0.0, 2.0])], T([1.0, 0.0]), t=t)
    assert torch.allclose(out, T(expected), atol=1e-6)


def test_slerp_colinear_falls_back_to_lerp():
    assert torch.allclose(run("slerp", [T([2.0, 2.0])], T([1.0, 1.0]), t=0.25), T([1.25, 1.25]))
    assert torch.allclose(run("slerp", [T([-1.0, -1.0])], T([1.0, 1.0]), t=0.25), T([0.5, 0.5]))


def test_model_stock_ratio():
    base = torch.zeros(2)
    out = run("model_stock", [T([1.0, 0.0]), T([1.0, 1.0])], base)
    t = 2 * (math.sqrt(2) - 1)  # N cos / (1 + (N-1) cos) with N = 2, cos = 1/sqrt(2)
    assert torch.allclose(out, t * T([1.0, 0.5]), atol=1e-6)
    assert torch.allclose(run("model_stock", [T([1.0, 0.0]), T([0.0, 1.0])], base), base)


def test_model_stock_filter_wise_uses_one_ratio_per_row():
    base = torch.zeros(2, 2)
    xs = [T([[1.0, 0.0], [1.0, 0.0]]), T([[0.0, 1.0], [2.0, 0.0]])]
    out = run("model_stock", xs, base, filter_wise=True)
    # row 0: cos 0 -> base; row 1: cos 1 -> t = 1 -> average [1.5, 0]
    assert torch.allclose(out, T([[0.0, 0.0], [1.5, 0.0]]))


def test_fisher_weighting_and_equal_fisher_is_the_average():
    xs = [T([1.0, 1.0]), T([3.0, 3.0])]
    out = run("fisher", xs, extras={"fisher": [T([1.0, 3.0]), T([1.0, 1.0])]}, min_fisher=0.0)
    assert torch.allclose(out, T([2.0, 1.5]))  # (1+3)/2, (3+3)/4
    same = [T([0.7, 0.2]), T([0.7, 0.2])]
    out = run("fisher", xs, extras={"fisher": same}, weight=[1, 3])
    assert torch.allclose(out, T([2.5, 2.5]))
    assert torch.allclose(run("fisher", xs, extras={"fisher": None}), T([2.0, 2.0]))


def test_regmean_closed_form_with_off_diagonal_scaling():
    w1, w2 = T([[1.0, 0.0]]), T([[0.0, 1.0]])
    g1, g2 = T([[2.0, 1.0], [1.0, 2.0]]), torch.eye(2)
    out = run("regmean", [w1, w2], extras={"gram": [g1, g2]}, alpha=0.5)
    # G1' = [[2,.5],[.5,2]]; (W1 G1' + W2 G2) (G1' + G2)^-1 = [2, 1.5] [[3,.5],[.5,3]]^-1
    assert torch.allclose(out, T([[0.6, 0.4]]), atol=1e-6)


def test_regmean_minimises_the_summed_regression_loss():
    torch.manual_seed(1)
    xs = [torch.randn(30, 4), torch.randn(20, 4)]
    ws = [torch.randn(3, 4), torch.randn(3, 4)]
    out = run("regmean", ws, extras={"gram": [x.T @ x for x in xs]}, alpha=1.0)
    lstsq = torch.linalg.lstsq(torch.cat(xs), torch.cat([x @ w.T for x, w in zip(xs, ws)])).solution
    assert torch.allclose(out, lstsq.T, atol=1e-4)
    bias = run("regmean", [T([1.0, 2.0]), T([3.0, 4.0])], extras={"gram": None})
    assert torch.allclose(bias, T([2.0, 3.0]))


# ---------------------------------------------------------------- registry behaviour
def test_registry_fails_loudly_and_lists_names():
    with pytest.raises(UserError, match=r"unknown merge method 'tie'; valid names: .*ties"):
        get_method("tie")
    with pytest.raises(ValueError, match="already registered"):
        merge_method("linear", paper="x")(lambda tensors: tensors[0])


def test_unknown_and_missing_parameters_name_the_key():
    with pytest.raises(UserError, match="no parameter 'densty'.*valid parameters: .*density"):
        run("ties", [T([1.0])], T([0.0]), densty=0.5)
    with pytest.raises(UserError, match="needs parameter 't'"):
        run("slerp", [T([1.0])], T([0.0]))


def test_every_method_has_a_paper():
    for name in METHODS.names():
        assert get_method(name).paper.startswith("https://"), name


# ---------------------------------------------------------------- contract, from the registry
def _inputs(name, n=3, shape=(4, 3), seed=0):
    m = get_method(name)
    if name == "arcee_fusion":  # keeps only outliers (median + 1.5 IQR): none among 12 entries
        shape = (16, 16)
    g = torch.Generator().manual_seed(seed)
    n = min(max(n, m.min_models), m.max_models or n)
    base = torch.randn(shape, generator=g)
    xs = [base + torch.randn(shape, generator=g) for _ in range(n)]
    extras = {}
    if "fisher" in m.extras:
        extras["fisher"] = [torch.rand(shape, generator=g) for _ in range(n)]
    if "gram" in m.extras:
        extras["gram"] = [(lambda a: a.T @ a)(torch.randn(8, shape[1], generator=g)) for _ in range(n)]
    params = {"t": 0.3} if "t" in m.global_params else {}
    if "density" in m.per_model:
        params["density"] = [0.5, 0.7, 0.9][:n] + [0.5] * max(0, n - 3)
    if "weight" in m.per_model:
        params["weight"] = [1.0, 0.5, 2.0][:n] + [1.0] * max(0, n - 3)
    if "epsilon" in m.per_model:  # DELLA: density +- epsilon must stay inside (0, 1)
        params["epsilon"] = 0.05
    return m, base if m.base != "none" else None, xs, extras, params


ALL = METHODS.names()


@pytest.mark.parametrize("name", [n for n in ALL if get_method(n).idempotent])
def test_contract_identical_inputs_give_the_input(name):
    m, base, xs, extras, params = _inputs(name)
    same = [xs[0].clone() for _ in xs]
    b = xs[0].clone() if base is not None else None
    if "gram" in extras:
        extras["gram"] = [extras["gram"][0]] * len(xs)
    ctx = TensorContext("w", tuple(f"m{i}" for i in range(len(xs))))
    out = m(same, b, ctx=ctx, extras=extras, **params)
    assert out.shape == xs[0].shape and out.dtype == torch.float32
    assert torch.allclose(out, xs[0], atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_contract_deterministic_shape_dtype(name):
    m, base, xs, extras, params = _inputs(name)
    ctx = TensorContext("w", tuple(f"m{i}" for i in range(len(xs))))
    a = m(xs, base, ctx=ctx, extras=extras, **params)
    b = m([x.clone() for x in xs], base, ctx=ctx, extras=extras, **params)
    assert torch.equal(a, b) and a.shape == xs[0].shape and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    if base is not None:
        assert not torch.allclose(a, base)  # the models moved it


@pytest.mark.parametrize("name", [n for n in ALL if get_method(n).order_independent])
def test_contract_order_independent(name):
    m, base, xs, extras, params = _inputs(name)
    names = tuple(f"m{i}" for i in range(len(xs)))
    perm = list(reversed(range(len(xs))))
    a = m(xs, base, ctx=TensorContext("w", names), extras=extras, **params)
    pparams = {k: ([v[i] for i in perm] if isinstance(v, list) else v) for k, v in params.items()}
    pextras = {k: [v[i] for i in perm] for k, v in extras.items()}
    b = m([xs[i] for i in perm], base, ctx=TensorContext("w", tuple(names[i] for i in perm)),
          extras=pextras, **pparams)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in ALL if get_method(n).base == "required"])
def test_contract_base_model_required(name):
    m, _, xs, extras, params = _inputs(name)
    with pytest.raises(UserError, match="needs a base_model"):
        m(xs, None, extras=extras, **params)
