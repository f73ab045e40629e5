"""Image preprocessing from a backbone's pretrained config, plus configurable augmentation.

``pre`` is a timm-style pretrained config: ``input_size`` (3, H, W), ``mean``, ``std``,
``interpolation`` ("bicubic", "bilinear", "nearest"; default bicubic) and ``crop_pct``
(default 0.875). The eval transform follows timm's ``transforms_imagenet_eval`` (center crop
mode) exactly: resize the shorter side to ``floor(size / crop_pct)``, center-crop to (H, W),
scale to [0, 1] and normalise. Training adds the augmentations of :class:`ImageAugment`
(torchvision transforms v2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from transfuse.config import ImageAugment
from transfuse.data.images import to_rgb
from transfuse.errors import UserError

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}
DEFAULT_CROP_PCT = 0.875


def _resolve(
    pre: Mapping[str, Any],
) -> tuple[tuple[int, int], InterpolationMode, float, list[float], list[float]]:
    try:
        c, h, w = (int(x) for x in pre["input_size"])
        mean, std = [float(x) for x in pre["mean"]], [float(x) for x in pre["std"]]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"preprocessing config {dict(pre)} is incomplete or malformed ({e}); it needs "
            "input_size (3, H, W), mean and std"
        ) from None
    if c != 3 or len(mean) != 3 or len(std) != 3:
        raise UserError(
            f"preprocessing config needs 3 channels, got input_size {pre['input_size']}, mean {mean}, std {std}"
        )
    name = pre.get("interpolation") or "bicubic"
    if name not in _INTERPOLATIONS:
        raise UserError(
            f"preprocessing interpolation {name!r} is not supported; valid: {', '.join(_INTERPOLATIONS)}"
        )
    crop_pct = float(pre.get("crop_pct") or DEFAULT_CROP_PCT)
    if not 0.0 < crop_pct <= 1.0:
        raise UserError(f"preprocessing crop_pct must be in (0, 1], got {crop_pct}")
    return (h, w), _INTERPOLATIONS[name], crop_pct, mean, std


class _ResizeShorter:
    """Resize so the image covers ``size`` (H, W) keeping its aspect ratio (timm ResizeKeepRatio)."""

    def __init__(self, size: tuple[int, int], interpolation: InterpolationMode):
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = img.height, img.width
        ratio = min(h / self.size[0], w / self.size[1])
        return v2.functional.resize(img, [round(h / ratio), round(w / ratio)], self.interpolation)


def _eval_resize(size: tuple[int, int], interp: InterpolationMode, crop_pct: float) -> list[Callable]:
    scale = (math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct))
    resize = (
        v2.Resize(scale[0], interpolation=interp) if scale[0] == scale[1] else _ResizeShorter(scale, interp)
    )
    return [resize, v2.CenterCrop(size)]


def build_image_transform(
    pre: Mapping[str, Any], train: bool, augment: ImageAugment | None = None
) -> Callable[[Image.Image], torch.Tensor]:
    """A PIL image (any mode) -> normalised float tensor (3, H, W) transform.

    ``train=False`` or no/disabled ``augment`` gives the deterministic timm eval transform.
    """
    size, interp, crop_pct, mean, std = _resolve(pre)
    steps: list[Callable] = [to_rgb]
    aug = augment if train and augment is not None and augment.enabled else None
    if aug is None:
        steps += _eval_resize(size, interp, crop_pct)
    else:
        if aug.random_resized_crop is not None:
            steps.append(
                v2.RandomResizedCrop(
                    size, scale=aug.random_resized_crop, ratio=aug.crop_ratio, interpolation=interp
                )
            )
        else:
            steps += _eval_resize(size, interp, crop_pct)
        if aug.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(aug.hflip))
        if aug.vflip > 0:
            steps.append(v2.RandomVerticalFlip(aug.vflip))
        if aug.rotation > 0:
            steps.append(v2.RandomRotation(aug.rotation, interpolation=InterpolationMode.BILINEAR))
        if aug.color_jitter > 0 or aug.hue > 0:
            s = aug.color_jitter
            steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=aug.hue))
        if aug.randaugment:
            steps.append(v2.RandAugment(aug.randaugment_ops, aug.randaugment_magnitude, interpolation=interp))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if aug is not None and aug.random_erasing > 0:
        steps.append(v2.RandomErasing(aug.random_erasing, value=0))
    return v2.Compose(steps)
