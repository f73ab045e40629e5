"""Data-driven merging: Fisher and Gram estimation (golden checks on tiny linear models), the
coefficient search on a toy problem with a known optimum, and multi-head models from a merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from transfuse.errors import UserError
from transfuse.fuse.merge import (
    diagonal_fisher,
    evaluate_tasks,
    merge,
    normalized_scores,
    optuna_search,
    recompute_batchnorm,
    regmean_grams,
    save_tensors,
    search_parameters,
    task_state_dicts,
)

X = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0], [2.0, 0.5, -1.0], [-1.0, -1.0, 1.0]])
Y = torch.tensor([0, 1, 1, 0])


def _linear(seed: int, n_in: int = 3, n_out: int = 2) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out)


def _batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _hand_fisher(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, expected: bool):
    """d log p_c / dW = (e_c - p) x^T, d/db = e_c - p; squared and averaged over examples (numpy)."""
    w, b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()
    xs = x.double().numpy()
    p = _softmax(xs @ w.T + b)
    fw, fb = np.zeros_like(w), np.zeros_like(b)
    for n in range(len(xs)):
        classes = range(w.shape[0]) if expected else [int(y[n])]
        for c in classes:
            weight = p[n, c] if expected else 1.0
            r = np.eye(w.shape[0])[c] - p[n]
            fw += weight * np.outer(r, xs[n]) ** 2
            fb += weight * r ** 2
    return fw / len(xs), fb / len(xs)


def test_fisher_golden_at_zero_weights():
    """W = 0, b = 0: p = (1/2, 1/2), so F_b = 1/4 and F_W[j, k] = mean(x_k^2) / 4, for either mode."""
    model = nn.Linear(3, 2)
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    want_w = (X ** 2).mean(0).repeat(2, 1) / 4
    for mode in ("empirical", "expected"):
        f = diagonal_fisher(model, _batches(X, Y, 4), mode=mode)
        torch.testing.assert_close(f["bias"], torch.full((2,), 0.25))
        torch.testing.assert_close(f["weight"], want_w)


@pytest.mark.parametrize("mode", ["empirical", "expected"])
def test_fisher_matches_hand_computed_per_example_gradients(mode):
    model = _linear(0)
    fw, fb = _hand_fisher(model, X, Y, expected=mode == "expected")
    for size in (1, 3, 4):  # per-example gradients: the batching does not matter
        f = diagonal_fisher(model, _batches(X, Y, size), mode=mode)
        np.testing.assert_allclose(f["weight"].numpy(), fw, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(f["bias"].numpy(), fb, rtol=1e-5, atol=1e-7)
        assert f["weight"].dtype == torch.float32


def test_fisher_max_samples_filter_and_errors():
    model = _linear(0)
    fw, _ = _hand_fisher(model, X[:2], Y[:2], expected=False)
    f = diagonal_fisher(model, _batches(X, Y, 3), max_samples=2, params=lambda n: n == "weight")
    assert set(f) == {"weight"}
    np.testing.assert_allclose(f["weight"].numpy(), fw, rtol=1e-5)
    assert model.training  # the mode is restored
    with pytest.raises(UserError, match="mode must be"):
        diagonal_fisher(model, _batches(X, Y, 4), mode="sampled")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="no examples"):
        diagonal_fisher(model, [])


def test_gram_golden_two_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    g = regmean_grams(model, _batches(X, Y, 3))
    xs = X.double().numpy()
    h = np.maximum(xs @ model[0].weight.detach().double().numpy().T + model[0].bias.detach().double().numpy(), 0)
    assert set(g) == {"0.weight", "2.weight"}
    np.testing.assert_allclose(g["0.weight"].numpy(), xs.T @ xs / 4, rtol=1e-6)
    np.testing.assert_allclose(g["2.weight"].numpy(), h.T @ h / 4, rtol=1e-5, atol=1e-7)
    # a hand-computed entry: G[0, 0] = mean(x_0^2) = (1 + 0 + 4 + 1) / 4
    assert g["0.weight"][0, 0].item() == pytest.approx(1.5)
    half = regmean_grams(model, _batches(X, Y, 3), max_samples=2)
    np.testing.assert_allclose(half["0.weight"].numpy(), xs[:2].T @ xs[:2] / 2, rtol=1e-6)


class _Tokens(nn.Module):
    """A dict input like a text batch: a linear on every position, mean over the unmasked ones."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.proj = nn.Linear(3, 2)

    def forward(self, batch):
        m = batch["attention_mask"].unsqueeze(-1).float()
        return (self.proj(batch["x"]) * m).sum(1) / m.sum(1)


def test_gram_leaves_out_padded_positions():
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3) / 10
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    g = regmean_grams(_Tokens(), [({"x": x, "attention_mask": mask}, torch.tensor([0, 1]))])
    rows = torch.stack([x[0, 0], x[0, 1], x[1, 0]]).double()
    np.testing.assert_allclose(g["proj.weight"].numpy(), (rows.T @ rows / 3).numpy(), rtol=1e-6)
    # Fisher on a dict input: per-example slices trim the padding and give the same gradients
    f = diagonal_fisher(_Tokens(), [({"x": x, "attention_mask": mask}, torch.tensor([0, 1]))])
    assert f["proj.weight"].shape == (2, 3) and torch.isfinite(f["proj.weight"]).all()


def test_estimated_files_drive_fisher_and_regmean_merges(tmp_path):
    a, b = _linear(1), _linear(2)
    xa, xb = X, X.flip(0) * 1.5 + 0.3
    paths = {}
    for name, model, x in (("a", a, xa), ("b", b, xb)):
        paths[name] = save_tensors(dict(model.state_dict()), tmp_path / f"{name}.safetensors")
        save_tensors(diagonal_fisher(model, _batches(x, Y, 2)), tmp_path / f"{name}.fisher.safetensors")
        save_tensors(regmean_grams(model, _batches(x, Y, 2)), tmp_path / f"{name}.gram.safetensors")
    fa, fb = (load_file(tmp_path / f"{n}.fisher.safetensors") for n in "ab")
    merge({"merge_method": "fisher", "parameters": {"min_fisher": 0.0},
           "models": [{"model": str(paths[n]), "fisher": str(tmp_path / f"{n}.fisher.safetensors")}
                      for n in "ab"]}, tmp_path / "fisher")
    out = load_file(tmp_path / "fisher/model.safetensors")
    want = (fa["weight"] * a.weight + fb["weight"] * b.weight) / (fa["weight"] + fb["weight"])
    torch.testing.assert_close(out["weight"], want.detach())
    # RegMean with alpha 1 is least squares on both models' inputs: min sum_i |X_i W^T - X_i W_i^T|^2 / n_i
    merge({"merge_method": "regmean", "parameters": {"alpha": 1.0},
           "models": [{"model": str(paths[n]), "gram": str(tmp_path / f"{n}.gram.safetensors")}
                      for n in "ab"]}, tmp_path / "regmean")
    out = load_file(tmp_path / "regmean/model.safetensors")
    xs = torch.cat([xa, xb]).double() / 2  # each model's rows weighted by 1 / sqrt(n_i) = 1/2
    targets = torch.cat([xa.double() @ a.weight.detach().double().T, xb.double() @ b.weight.detach().double().T]) / 2
    w_ls = torch.linalg.lstsq(xs, targets).solution.T
    torch.testing.assert_close(out["weight"].double(), w_ls, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ coefficient search


def _toy_task_arithmetic(tmp_path):
    base = {"w": torch.zeros(4)}
    ft = {"w": torch.ones(4)}  # task vector 1: the merge is lambda * 1
    save_tensors(base, tmp_path / "base.safetensors")
    save_tensors(ft, tmp_path / "ft.safetensors")
    cfg = {"merge_method": "task_arithmetic", "base_model": str(tmp_path / "base.safetensors"),
           "models": [{"model": str(tmp_path / "ft.safetensors")}]}

    def score(path) -> float:  # best at lambda = 0.6
        return -float(((load_file(path / "model.safetensors")["w"] - 0.6) ** 2).sum())
    return cfg, score


def test_grid_search_picks_the_known_optimum(tmp_path):
    cfg, score = _toy_task_arithmetic(tmp_path)
    r = search_parameters(cfg, {"lambda": [0.2, 0.4, 0.6, 0.8, 1.0]}, score)
    assert r.best == {"lambda": 0.6} and r.best_score == pytest.approx(0.0, abs=1e-10)
    assert [t[0]["lambda"] for t in r.trials] == [0.2, 0.4, 0.6, 0.8, 1.0]


def test_optuna_search_finds_the_optimum_and_is_seeded(tmp_path):
    cfg, score = _toy_task_arithmetic(tmp_path)
    r = optuna_search(cfg, {"lambda": (0.0, 1.5)}, score, n_trials=25, seed=3)
    assert abs(r.best["lambda"] - 0.6) < 0.05
    again = optuna_search(cfg, {"lambda": (0.0, 1.5)}, score, n_trials=5, seed=3)
    assert [t[0] for t in again.trials] == [t[0] for t in r.trials[:5]]
    choice = optuna_search(cfg, {"lambda": [0.1, 0.6, 1.2]}, score, n_trials=8, seed=0)
    assert choice.best == {"lambda": 0.6}
    with pytest.raises(UserError, match="non-empty space"):
        optuna_search(cfg, {}, score)


# ------------------------------------------------------------------ multi-head models


class _Net(nn.Module):
    def __init__(self, n_classes: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, n_classes)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_task_state_dicts_rebuild_each_task_on_the_merged_backbone(tmp_path):
    nets = {"spam": _Net(2, 1), "topics": _Net(3, 2), "other": _Net(3, 3)}
    models = []
    for name, net in nets.items():
        models.append({"model": str(save_tensors(dict(net.state_dict()), tmp_path / f"{name}.safetensors")),
                       "name": name})
    merge({"merge_method": "linear", "models": models, "heads": ["head"]}, tmp_path / "out")
    states = task_state_dicts(tmp_path / "out")
    assert set(states) == set(nets)
    mean_body = sum(n.body.weight for n in nets.values()) / 3
    for name, net in nets.items():
        fresh = _Net(net.head.out_features, 99)
        fresh.load_state_dict(states[name])  # strict: the original names come back
        torch.testing.assert_close(fresh.body.weight, mean_body.detach())
        torch.testing.assert_close(fresh.head.weight, net.head.weight)  # same shapes, kept per task
    scores = evaluate_tasks(states, {n: (lambda sd, n=n: float(sd["head.weight"].shape[0])) for n in nets})
    assert scores == {"spam": 2.0, "topics": 3.0, "other": 3.0, "average": pytest.approx(8 / 3)}
    norm = normalized_scores(scores, {"spam": 4.0, "topics": 3.0, "other": 6.0})
    assert norm == {"spam": 0.5, "topics": 1.0, "other": 0.5, "average": pytest.approx(2 / 3)}
    with pytest.raises(UserError, match="no head for task"):
        evaluate_tasks(states, {"missing": lambda sd: 0.0})
    merge({"merge_method": "linear", "models": models[1:]}, tmp_path / "plain")
    with pytest.raises(UserError, match="no heads.json"):
        task_state_dicts(tmp_path / "plain")


def test_pointwise_convolutions_get_grams_and_regmean():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 2, 2)
    model(x)  # materialise the lazy layer
    g = regmean_grams(model, [(x, torch.tensor([0, 1]))])
    assert set(g) == {"0.weight", "3.weight"}  # the 3x3 convolution is not a linear map per position
    rows = x.permute(0, 2, 3, 1).reshape(-1, 3).double()  # one row of channels per position
    np.testing.assert_allclose(g["0.weight"].numpy(), (rows.T @ rows / 8).numpy(), rtol=1e-6)
    from transfuse.fuse.merge import get_method
    ws = [torch.randn(4, 3, 1, 1), torch.randn(4, 3, 1, 1)]
    grams = [g["0.weight"], torch.eye(3)]
    out = get_method("regmean")(ws, extras={"gram": grams}, alpha=0.9)
    flat = get_method("regmean")([w.reshape(4, 3) for w in ws], extras={"gram": grams}, alpha=0.9)
    assert out.shape == (4, 3, 1, 1)
    torch.testing.assert_close(out.reshape(4, 3), flat)


def test_recompute_batchnorm_reestimates_statistics_and_changes_nothing_else():
    g = torch.Generator().manual_seed(0)
    # dropout before the BatchNorm: its inputs are model[0]'s outputs only if dropout is off
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.BatchNorm1d(3), nn.Linear(3, 2))
    bn = model[2]
    bn.running_mean.fill_(7.0)
    bn.running_var.fill_(9.0)
    bn.num_batches_tracked.fill_(100)  # without the reset, new batches would barely move these
    bn.momentum = 0.3
    model.eval()
    model[3].train()  # mixed modes: each module's own mode comes back
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    xs = [torch.randn(5, 4, generator=g) * 3 + 1 for _ in range(3)]
    assert recompute_batchnorm(model, [(x, torch.zeros(5)) for x in xs]) == 1
    with torch.no_grad():
        h = [model[0](x) for x in xs]  # the BatchNorm's inputs, computed independently
    assert torch.allclose(bn.running_mean, torch.stack([t.mean(0) for t in h]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([t.var(0) for t in h]).mean(0), atol=1e-5)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.3
    assert [m.training for m in model.modules()] == [False, False, False, False, True]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    model.eval()
    x = torch.randn(2, 4, generator=g)
    expected = model[3]((model[0](x) - bn.running_mean) / torch.sqrt(bn.running_var + 1e-5)
                        * bn.weight + bn.bias)
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert recompute_batchnorm(nn.Linear(2, 2), []) == 0
    before = {k: v.clone() for k, v in bn.named_buffers()}
    with pytest.raises(UserError, match=r"^recompute_batchnorm: no batches were given; "):
        recompute_batchnorm(model, [])
    assert all(torch.equal(getattr(bn, k), v) for k, v in before.items())  # nothing lost
    assert bn.momentum == 0.3 and not model.training

    def failing():  # one batch, then the data source fails: the old statistics come back too
        yield xs[0], torch.zeros(5)
        raise OSError("disk gone")

    with pytest.raises(OSError):
        recompute_batchnorm(model, failing())
    assert all(torch.equal(getattr(bn, k), v) for k, v in before.items())
