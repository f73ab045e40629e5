"""Cached partial fine-tuning: one step on cached activations equals one step through the whole
network with its bottom frozen, and a ``partial_ft`` winner ships and serves like a fine-tune."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_config
from transfuse.backbones.registry import create_backbone
from transfuse.backbones.split import split_backbone
from transfuse.errors import UserError
from transfuse.train.finetune import Classifier


def _one_step(model: Classifier, batch, y: torch.Tensor, seed: int) -> float:
    """One AdamW step (weight decay on, lr large enough to move every weight) in train mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)
    torch.manual_seed(seed)  # the same dropout masks in the top for both paths
    loss = torch.nn.functional.cross_entropy(model(batch), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def _check_step(backbone, inputs, n_top: int) -> None:
    torch.manual_seed(0)
    n_classes = 3
    whole = Classifier(copy.deepcopy(backbone), n_classes, freeze_bn=True)
    split = split_backbone(backbone, n_top)
    top = Classifier(split.top, n_classes, freeze_bn=True)
    top.head.load_state_dict(whole.head.state_dict())

    # the whole network with its bottom frozen: only the top's parameters and the head train,
    # and the bottom runs in eval mode (no dropout), as when its activations are cached
    cut = split.n_total - n_top
    trainable = {k for k in top.state_dict()}
    merged_names = set(split.merge(split.top).state_dict())  # names in the whole backbone
    assert merged_names == set(backbone.state_dict())
    bottom_prefixes = _bottom_prefixes(backbone, cut)
    for name, p in whole.backbone.named_parameters():
        p.requires_grad_(not name.startswith(bottom_prefixes))
    whole.train()
    for name, m in whole.backbone.named_modules():
        if name and name.startswith(tuple(b.rstrip(".") for b in bottom_prefixes)):
            m.eval()
    top.train()

    batch = backbone.collate([backbone.make_transform()(x) for x in inputs])
    cached = split.top.collate(split.bottom(batch))
    y = torch.tensor([0, 1, 2, 1][: len(inputs)])
    loss_whole = _one_step(whole, batch, y, seed=7)
    loss_top = _one_step(top, cached, y, seed=7)
    assert abs(loss_whole - loss_top) < 1e-5
    assert trainable  # the top has weights

    # after the step: the merged network equals the whole network's weights (1e-5), the bottom
    # never moved, and the step did move the top
    merged = split.merge(top.backbone).state_dict()
    after = whole.backbone.state_dict()
    before = backbone.state_dict()
    moved = 0
    for k, v in after.items():
        assert torch.allclose(merged[k].float(), v.float(), atol=1e-5, rtol=0), k
        if k.startswith(bottom_prefixes):
            assert torch.equal(merged[k], before[k]), k
        elif v.is_floating_point() and not torch.equal(v, before[k]):
            moved += 1
    assert moved > 4
    assert torch.allclose(top.head.weight, whole.head.weight, atol=1e-5, rtol=0)


def _bottom_prefixes(backbone, cut: int) -> tuple[str, ...]:
    names = list(backbone.state_dict())
    if any(n.startswith("model.encoder.layer.") for n in names):  # BERT-style text encoder
        return ("model.embeddings.", *(f"model.encoder.layer.{i}." for i in range(cut)))
    return ("model.conv_stem.", "model.bn1.", *(f"model.blocks.{i}." for i in range(cut)))


def test_one_step_on_cached_text_activations_equals_the_whole_network():
    bb = create_backbone("bundled:minilm_l3")
    _check_step(bb, ["a small dog barking at night", "a tree", "the quick brown fox jumps over the dog",
                     "rain"], n_top=1)


def test_one_step_on_cached_image_activations_equals_the_whole_network():
    from PIL import Image

    bb = create_backbone("bundled:efficientnet_lite0", image_size=48)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in range(4)]
    _check_step(bb, images, n_top=2)


def test_split_refuses_a_block_count_that_does_not_fit():
    bb = create_backbone("bundled:minilm_l3")
    with pytest.raises(UserError, match=r"train.partial.blocks=3 does not fit bundled:minilm_l3: it has 3 "
                                        r"transformer layers; give 1 to 2"):
        split_backbone(bb, 3)


def test_partial_ft_candidate_ships_and_serves(digits_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    run_config({
        "data": {"source": "folder", "path": str(digits_folder)},
        "split": {"folds": 2, "test_size": 0.25},
        "backbones": ["bundled:efficientnet_lite0"],
        "preprocess": {"image_size": 32},
        "adapt": {"strategies": ["partial_ft"], "baseline": False},
        "train": {"finetune": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "inner_val": 0.25},
                  "partial": {"blocks": 2}},
        "fuse": {"ensembles": [], "features": {"enabled": False}},
        "calibration": {"enabled": False},
        "output": {"dir": str(out)},
    })
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"] == "efficientnet_lite0/partial_ft"
    (cand,) = report["candidates"]  # no fold bag without a time limit (adapt.bag: null)
    assert cand["selected"]["final"]["epochs"] in (1, 2)  # the folds' inner splits chose it
    import transfuse
    import yaml

    from transfuse.data.registry import load_dataset

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    data = load_dataset("folder", cfg["data"]["path"])
    test_files = [data.items[i] for i in json.loads((out / "splits.json").read_text())["test_idx"]]
    run = transfuse.load(out)
    served = run.predict_proba(test_files)[:, [run.classes.index(c) for c in data.classes]]
    saved = np.load(out / "model" / "test_proba.npy")
    assert served.shape == saved.shape
    np.testing.assert_allclose(served, saved, atol=1e-5)
    # the shipped weights: bottom untouched, top trained
    from safetensors.torch import load_file

    weights = load_file(str(out / "model" / "model.safetensors"))
    ref = create_backbone("bundled:efficientnet_lite0", image_size=32).state_dict()
    stem = "backbone.model.conv_stem.weight"
    assert torch.equal(weights[stem], ref["model.conv_stem.weight"])
    assert torch.equal(weights["backbone.model.blocks.4.0.conv_pw.weight"], ref["model.blocks.4.0.conv_pw.weight"])
    assert not torch.equal(weights["backbone.model.blocks.6.0.conv_pw.weight"], ref["model.blocks.6.0.conv_pw.weight"])


def test_cached_views_hold_the_plain_view_first_and_training_draws_among_them():
    """``train.partial.views``: view 0 is the plain activation (what evaluation reads); the others
    are the bottom's activations of augmented images, the same for the same seed."""
    from PIL import Image

    from transfuse.adapt.partial import cached_activations
    from transfuse.config.data import ImageAugment
    from transfuse.data.base import Dataset

    bb = create_backbone("bundled:efficientnet_lite0", image_size=48)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]
    ds = Dataset(modality="image", items=images, labels=np.array([0, 1, 0]), classes=["a", "b"], ids=["0", "1", "2"])
    split = split_backbone(bb, 2)
    plain = cached_activations(split, bb, ds, batch_size=2)
    aug = ImageAugment(hflip=1.0, random_resized_crop=None, color_jitter=0.0)  # every view: the mirror image
    viewed = cached_activations(split, bb, ds, batch_size=2, views=2, augment=aug, seed=3)
    mirror = split.bottom(bb.collate([bb.make_transform()(im.transpose(Image.FLIP_LEFT_RIGHT)) for im in images]))
    for i in range(3):
        assert viewed.items[i].shape == (3, *plain.items[i].shape)
        torch.testing.assert_close(viewed.items[i][0], plain.items[i], rtol=0, atol=0)
        torch.testing.assert_close(viewed.items[i][1], mirror[i], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(viewed.items[i][0], viewed.items[i][1])
    # evaluation reads the plain view; training draws each view (the torch generator decides)
    top = split.top
    assert torch.equal(top.make_transform(train=False)(viewed.items[0]), plain.items[0])
    torch.manual_seed(0)
    drawn = {int(top.make_transform(train=True)(viewed.items[0]).sum() != plain.items[0].sum()) for _ in range(40)}
    assert drawn == {0, 1}
    again = cached_activations(split, bb, ds, batch_size=2, views=2, augment=ImageAugment(), seed=3)
    other = cached_activations(split, bb, ds, batch_size=2, views=2, augment=ImageAugment(), seed=3)
    torch.testing.assert_close(again.items[1], other.items[1], rtol=0, atol=0)
