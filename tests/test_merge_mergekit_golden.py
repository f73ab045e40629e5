"""transfuse's merges equal mergekit 0.1.5's, tensor for tensor, for the methods taken from it later.

The expected tensors come from running mergekit once (``tests/data/make_mergekit_golden.py``, which
stores the inputs and mergekit's outputs in ``tests/data/mergekit_golden.npz``); this test needs
no mergekit. Each case runs ``merge`` on the same mergekit-format config, from safetensors files,
so the config plumbing (names, defaults, base handling, filter lists, passthrough's slices and the
output's layer count) is checked with the numbers.
DELLA's masks are random: the generator made mergekit draw transfuse's masks (same seed per tensor
and model), so the rest of the method is compared exactly.
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

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "mergekit_golden.json").read_text())
TOL = 2e-6  # measured 0 on every case; room for other BLAS builds and CPUs


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    arrays = np.load(DATA / "mergekit_golden.npz")
    root = tmp_path_factory.mktemp("mk")
    for m in META["models"]:
        sd = {k.split("/", 1)[1]: torch.from_numpy(arrays[k]) for k in arrays.files
              if k.startswith(m + "/")}
        (root / m).mkdir()
        save_file(sd, root / m / "model.safetensors")
        (root / m / "config.json").write_text(json.dumps(META["llama_config"]))
    return root, arrays


def _config(cfg: dict, root: Path) -> dict:
    out = json.loads(json.dumps(cfg))
    if "base_model" in out:
        out["base_model"] = str(root / out["base_model"])
    for m in out.get("models", []) + [src for sl in out.get("slices", []) for src in sl["sources"]]:
        m["model"] = str(root / m["model"])
    return {**out, "dtype": "float32", "hash_inputs": False}


@pytest.mark.parametrize("case", [c["case"] for c in META["cases"]])
def test_merge_equals_mergekit(golden, case, tmp_path):
    root, arrays = golden
    spec = next(c for c in META["cases"] if c["case"] == case)
    merge(_config(spec["config"], root), tmp_path / "out")
    layers = json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"]
    assert layers == spec["num_hidden_layers"]
    ours = load_file(tmp_path / "out" / "model.safetensors")
    theirs = {k.split("/", 1)[1]: torch.from_numpy(arrays[k]) for k in arrays.files
              if k.startswith(case + "/")}
    assert sorted(ours) == sorted(theirs)
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in theirs)
    assert worst <= TOL, f"{case}: max abs diff {worst:.3g}"
    moved = max(float((theirs[k] - arrays[f"m0/{k}"]).abs().max()) for k in theirs
                if f"m0/{k}" in arrays.files)
    assert moved > 1e-3  # the case merges something (not the base copied through)


def test_della_masks_are_seeded_per_tensor_and_model():
    from transfuse.fuse.merge import TensorContext
    torch.manual_seed(0)
    base = torch.randn(8, 32)
    xs = [base + torch.randn(8, 32) for _ in range(2)]
    kw = {"density": [0.5, 0.5], "epsilon": [0.2, 0.2]}
    run = get_method("della_linear")
    a = run(xs, base, ctx=TensorContext("w", ("a", "b")), **kw)
    assert torch.equal(a, run(xs[::-1], base, ctx=TensorContext("w", ("b", "a")), **kw))
    assert not torch.equal(a, run(xs, base, ctx=TensorContext("w", ("a", "b"), seed=1), **kw))
    kept = get_method("della_linear")([base + 1], base, ctx=TensorContext("w", ("a",)),
                                      density=0.3, epsilon=0.1, rescale=False)
    assert abs(float((kept != base).float().mean()) - 0.3) < 0.1  # keeps density on average


def test_della_epsilon_out_of_range_is_one_line():
    with pytest.raises(UserError, match=r"^della: parameter 'epsilon' is 0.5 .*lower epsilon"):
        get_method("della")([torch.ones(4)], torch.zeros(4), density=0.6, epsilon=0.5)


def test_magprune_probabilities_follow_magnitude_rank():
    from transfuse.fuse.merge import blocks
    p = blocks.magprune_probabilities(torch.tensor([0.3, -2.0, 0.1, 1.0, -0.5]), 0.5, 0.1)
    assert torch.allclose(p, torch.tensor([0.45, 0.6, 0.4, 0.55, 0.5]))  # ranks 1,4,0,3,2 of 4


def test_ram_unique_and_shared_entries():
    base = torch.zeros(4)
    xs = [torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 3.0, 0.0])]
    out = get_method("ram")(xs, base)
    assert torch.allclose(out, torch.tensor([1.0, 3.0, 3.0, 0.0]))  # unique kept, shared mean


def test_nearswap_and_multislerp_edge_cases():
    out = get_method("nearswap")([torch.tensor([0.0, 0.5, 5.0])], torch.zeros(3), t=1.0)
    assert torch.allclose(out, torch.tensor([0.0, 0.5, 1.0]))  # weight min(1, t / |diff|)
    same = torch.randn(3, 4)  # no model moved the tensor: mergekit raises, transfuse keeps it
    assert torch.equal(get_method("multislerp")([same] * 3, same), same)


def test_slices_beyond_a_models_layers_are_named(golden, tmp_path):
    root, _ = golden
    cfg = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(root / "m1"), "layer_range": [0, 1]}]},
        {"sources": [{"model": str(root / "m2"), "layer_range": [0, 3]}]}]}
    with pytest.raises(UserError, match=r"^slices\[1\]: layer_range \[0, 3\] but model 'm2' has "
                                        r"layers 0..0 under 'model.layers'; fix layer_range$"):
        merge(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
