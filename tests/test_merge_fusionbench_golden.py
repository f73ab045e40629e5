"""TSV-M, Iso-C, Iso-CTS and WUDI equal FusionBench's algorithms on small random task vectors.

The expected tensors come from ``tests/data/make_fusionbench_golden.py``: a transcription of
FusionBench's state-dict functions (checked equal to FusionBench 0.2.33 itself when it was
installed; see ``fusionbench_golden.json``). Each case runs ``merge`` from safetensors files, so the
per-tensor streaming engine is what is compared. Shapes: three matrices (tall, wide, 6 x 20), a
bias, a norm and a 4-D convolution (the last three get the mean task vector, as in FusionBench).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from transfuse.errors import UserError
from transfuse.fuse.merge import get_method, merge
from transfuse.fuse.merge.methods import svd, wudi

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "fusionbench_golden.json").read_text())
TOL = 2e-6  # float32 SVDs of differently laid-out matrices (measured worst 8.3e-7)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    arrays = np.load(DATA / "fusionbench_golden.npz")
    root = tmp_path_factory.mktemp("fb")
    names = ["base"] + [f"model{i}" for i in range(3)]
    for m in names:
        save_file({k.split("/", 1)[1]: torch.from_numpy(arrays[k]) for k in arrays.files
                   if k.startswith(m + "/")}, root / f"{m}.safetensors")
    return root, arrays


@pytest.mark.parametrize("case", [c["case"] for c in META["cases"]])
def test_merge_equals_fusionbench(golden, case, tmp_path):
    root, arrays = golden
    spec = next(c for c in META["cases"] if c["case"] == case)
    params = dict(spec["parameters"])
    weights = params.pop("weight", None)
    models = [{"model": str(root / f"model{i}.safetensors")} for i in range(3)]
    if weights:
        for m, w in zip(models, weights):
            m["parameters"] = {"weight": w}
    merge({"merge_method": spec["method"], "base_model": str(root / "base.safetensors"),
           "models": models, "parameters": params, "hash_inputs": False}, tmp_path / "out")
    ours = load_file(tmp_path / "out" / "model.safetensors")
    expected = {k.split("/", 1)[1]: torch.from_numpy(arrays[k]) for k in arrays.files
                if k.startswith(case + "/")}
    assert sorted(ours) == sorted(expected)
    worst = max(float((ours[k] - expected[k]).abs().max()) for k in expected)
    assert worst <= TOL, f"{case}: max abs diff {worst:.3g}"


def test_transcription_was_checked_against_fusionbench():
    diffs = META["transcription_vs_fusionbench_max_abs_diff"]
    assert set(diffs) == {"tsv_merge", "iso_c", "iso_cts", "wudi"}
    assert max(diffs.values()) <= 1e-6


def test_tsv_keeps_the_mean_where_fusionbench_keeps_nothing():
    # 3 tasks on a rank-2 matrix: int(2 / 3) = 0 directions each; FusionBench's merged update is 0
    base = torch.zeros(2, 5)
    xs = [torch.randn(2, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    out = get_method("tsv_merge")(xs, base)
    assert torch.allclose(out, sum(xs) / 3, atol=1e-6)


def test_tsv_of_orthogonal_tasks_is_their_sum():
    # task vectors in orthogonal row and column spaces: TSV-M's orthogonalisation changes nothing
    base = torch.zeros(4, 4)
    a = torch.zeros(4, 4); a[0, 0] = 3.0; a[1, 1] = 1.0
    b = torch.zeros(4, 4); b[2, 2] = 2.0; b[3, 3] = 0.5
    out = get_method("tsv_merge")([a, b], base, alpha=0.5)
    assert torch.allclose(out, 0.5 * (a + b), atol=1e-6)


def test_iso_c_flattens_the_spectrum():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 4, generator=g) for _ in range(2)]
    out = get_method("iso_c")(xs, torch.zeros(6, 4), alpha=2.0)
    s = torch.linalg.svdvals(out)
    assert torch.allclose(s, torch.full_like(s, 2.0 * float(torch.linalg.svdvals(sum(xs)).mean())),
                          atol=1e-5)


@pytest.mark.parametrize("method", ["tsv_merge", "iso_c", "iso_cts", "wudi"])
def test_a_pointwise_convolution_merges_as_the_linear_map_it_is(method, one_thread):
    # a 1x1 convolution's (out, in, 1, 1) weight is a linear map over channels: it merges exactly
    # as the (out, in) matrix does; a spatial (3x3) kernel gets the mean task vector instead
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 5, generator=g)
    xs = [base + 0.1 * torch.randn(6, 5, generator=g) for _ in range(3)]
    kwargs = {"iter_num": 30, "lr": 1e-3} if method == "wudi" else {}
    fn = get_method(method)
    matrix = fn(xs, base, alpha=1.5, **kwargs)
    conv = fn([x.view(6, 5, 1, 1) for x in xs], base.view(6, 5, 1, 1), alpha=1.5, **kwargs)
    assert conv.shape == (6, 5, 1, 1)
    assert torch.equal(conv.view(6, 5), matrix)
    assert not torch.allclose(matrix, base + 1.5 * (sum(xs) / 3 - base), atol=1e-4)
    spatial = fn([x.view(6, 5, 1, 1).expand(6, 5, 3, 3).contiguous() for x in xs],
                 base.view(6, 5, 1, 1).expand(6, 5, 3, 3).contiguous(), alpha=1.5, **kwargs)
    mean = base + 1.5 * (sum(xs) / 3 - base)
    assert torch.allclose(spatial, mean.view(6, 5, 1, 1).expand(6, 5, 3, 3), atol=1e-6)
    # a depthwise 1x1 weight (C, 1, 1, 1) scales channels: no matrix, the mean task vector
    depthwise = fn([x[:, :1].reshape(6, 1, 1, 1) for x in xs], base[:, :1].reshape(6, 1, 1, 1),
                   alpha=1.5, **kwargs)
    assert torch.allclose(depthwise, mean[:, :1].reshape(6, 1, 1, 1), atol=1e-6)


@pytest.mark.parametrize("r,n,fraction,expected", [
    (8, 3, 0.8, (5, 1)),  # int(6.4) = 6 common; round(2 / 3) * 3 = 3 task directions; 8 - 3 = 5
    (8, 8, 0.0, (0, 1)),  # no common space: one direction per task
    (5, 3, 0.0, (2, 1)),  # round(5 / 3) * 3 = 6 > 5: FusionBench's common size would be -1
])
def test_iso_cts_subspace_sizes(r, n, fraction, expected):
    assert svd.iso_cts_sizes(r, n, fraction) == expected


@pytest.fixture
def one_thread():
    """Tiny matrices: with 2 intra-op threads on a busy machine each matmul waits ~5 ms on the
    other thread (measured 1.7 s against 2 ms for 300 steps), so run as ``merge`` does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_wudi_closed_form_gradients_equal_autograd(one_thread):
    # the golden cases check the Adam arithmetic against torch.optim.Adam (FusionBench's); here
    # both closed-form gradients are checked against autograd of FusionBench's loss
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 40), (10, 6)]:  # per-task form (in > 4 out), then the Gram form
        ds = [0.1 * torch.randn(shape, generator=g) for _ in range(3)]
        out = wudi.wudi_task_vector(list(ds), iter_num=50, lr=1e-3)
        stacked = torch.stack(ds)
        norms = stacked.reshape(3, -1).norm(dim=-1).square()
        ref, m, v = stacked.sum(0), torch.zeros(shape), torch.zeros(shape)
        for step in range(1, 51):
            x = ref.clone().requires_grad_(True)
            loss = (((x - stacked) @ stacked.transpose(1, 2)).square() / norms.view(-1, 1, 1)).sum()
            (grad,) = torch.autograd.grad(loss, x)
            wudi.adam_step(ref, grad, m, v, step, 1e-3)
        assert torch.allclose(out, ref, atol=1e-6)


def test_svd_family_errors_are_one_line():
    with pytest.raises(UserError, match=r"^iso_cts: parameter 'common_space_fraction' is 1.5; "):
        get_method("iso_cts")([torch.ones(2, 2)], torch.zeros(2, 2), common_space_fraction=1.5)
    with pytest.raises(UserError, match=r"^wudi: parameters iter_num"):
        get_method("wudi")([torch.ones(2, 2)], torch.zeros(2, 2), lr=0.0)
