"""Image preprocessing matches timm's eval transform; augmentation is configurable and seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from transfuse.data.image_transforms import ImageAugment, build_image_transform
from transfuse.errors import UserError

LITE0 = {"input_size": (3, 224, 224), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
         "interpolation": "bicubic", "crop_pct": 0.875}  # fmt: skip
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
CONFIGS = [
    LITE0,
    {**IMAGENET, "input_size": (3, 96, 64), "interpolation": "bilinear", "crop_pct": 1.0},
    {**IMAGENET, "input_size": (3, 240, 240), "interpolation": "bicubic", "crop_pct": 0.882},
    {**IMAGENET, "input_size": (3, 33, 47), "interpolation": "nearest", "crop_pct": 0.9},
]


def noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return img.convert(mode)


@pytest.mark.parametrize(
    "pre", CONFIGS, ids=lambda p: f"{p['input_size'][1]}x{p['input_size'][2]}-{p['interpolation']}"
)
@pytest.mark.parametrize("size", [(50, 37), (37, 50), (300, 300)])
def test_eval_matches_timm(pre, size):
    from timm.data import create_transform, resolve_data_config

    reference = create_transform(**resolve_data_config({}, pretrained_cfg=dict(pre)))
    img = noise(*size)
    ours = build_image_transform(pre, train=False)(img)
    want = reference(img)
    assert ours.shape == want.shape == (3, *pre["input_size"][1:])
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=0)


def test_eval_converts_any_mode():
    from timm.data import create_transform, resolve_data_config

    grey = noise(40, 30, mode="L")
    want = create_transform(**resolve_data_config({}, pretrained_cfg=LITE0))(grey.convert("RGB"))
    torch.testing.assert_close(build_image_transform(LITE0, train=False)(grey), want, atol=1e-6, rtol=0)


def test_train_without_augment_is_eval():
    img = noise(64, 48)
    eval_out = build_image_transform(LITE0, train=False)(img)
    for aug in (None, ImageAugment(enabled=False)):
        torch.testing.assert_close(build_image_transform(LITE0, train=True, augment=aug)(img), eval_out)
    # augmentation is never applied at evaluation
    torch.testing.assert_close(
        build_image_transform(LITE0, train=False, augment=ImageAugment())(img), eval_out
    )


def test_full_crop_and_certain_flip_is_a_flipped_resize():
    img = noise(40, 40, seed=3)
    aug = ImageAugment(hflip=1.0, random_resized_crop=(1.0, 1.0), crop_ratio=(1.0, 1.0), color_jitter=0.0)
    out = build_image_transform(LITE0, train=True, augment=aug)(img)
    ref = np.asarray(img.resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255.0
    ref = (ref[:, ::-1, :] - 0.5) / 0.5  # flip left-right, normalise with mean = std = 0.5
    torch.testing.assert_close(out, torch.from_numpy(ref.transpose(2, 0, 1).copy()), atol=1e-6, rtol=0)


def test_augmentation_is_random_but_seeded():
    img = noise(64, 64, seed=5)
    aug = ImageAugment(rotation=15, randaugment=True, random_erasing=0.5, hue=0.05, vflip=0.5)
    t = build_image_transform(LITE0, train=True, augment=aug)
    torch.manual_seed(0)
    a = t(img)
    torch.manual_seed(0)
    b = t(img)
    torch.manual_seed(1)
    c = t(img)
    assert a.shape == (3, 224, 224) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_augment_config_validation():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ImageAugment(hflipp=0.5)
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        ImageAugment(hflip=2)
    with pytest.raises(ValidationError, match="0 < low <= high <= 1"):
        ImageAugment(random_resized_crop=(0.9, 0.5))
    aug = ImageAugment()
    with pytest.raises(ValidationError, match="frozen"):
        aug.hflip = 0.0
    assert hash(aug) == hash(ImageAugment())
    assert ImageAugment.model_validate(aug.model_dump()) == aug


def test_bad_pretrained_config():
    with pytest.raises(
        UserError, match="interpolation 'lanczos' is not supported; valid: bicubic, bilinear, nearest"
    ):
        build_image_transform({**LITE0, "interpolation": "lanczos"}, train=False)
    with pytest.raises(UserError, match="needs input_size \\(3, H, W\\), mean and std"):
        build_image_transform({"input_size": (3, 224, 224)}, train=False)
    with pytest.raises(UserError, match="crop_pct must be in \\(0, 1\\]"):
        build_image_transform({**LITE0, "crop_pct": 1.5}, train=False)
