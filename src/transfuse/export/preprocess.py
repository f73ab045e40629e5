"""The eval-time image preprocessing of the timm-style backbones in PIL + numpy, without torch:
what ``predict --engine onnx`` runs for an exported image model (importing torch alone costs
seconds). It reproduces :func:`transfuse.data.image_transforms.build_image_transform` with
``train=False`` step for step on PIL images (torchvision resizes PIL images with PIL itself):
RGB, resize (shorter side to ``floor(size / crop_pct)``, or cover a non-square size keeping the
aspect ratio), centre crop, scale to [0, 1], normalise by mean and std, channels first.

The recipe travels in the export's ``onnx.json`` (``parts[i].preprocess``) and in the ONNX file's
``metadata_props`` (``transfuse.preprocessing``), so the ONNX file is usable without transfuse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_CROP_PCT = 0.875
_PIL_FILTERS = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # PIL.Image.Resampling values
IMAGE_KEYS = ("input_size", "mean", "std")


def image_recipe(pre: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON recipe for a backbone's ``preprocess_config()``, or None when it is not the
    standard image transform (text, audio, or a config this module cannot reproduce)."""
    if not all(k in pre for k in IMAGE_KEYS):
        return None
    interp = pre.get("interpolation") or "bicubic"
    if interp not in _PIL_FILTERS:
        return None
    c, h, w = (int(x) for x in pre["input_size"])
    return {"type": "image", "input_size": [c, h, w], "mean": [float(x) for x in pre["mean"]],
            "std": [float(x) for x in pre["std"]], "interpolation": interp,
            "crop_pct": float(pre.get("crop_pct") or DEFAULT_CROP_PCT), "layout": "NCHW float32 RGB",
            "steps": "RGB; resize shorter side to floor(size / crop_pct) (keep aspect); centre crop to size; "
                     "/255; (x - mean) / std"}


def _resize(img: Any, size: int | tuple[int, int], resample: int) -> Any:
    """torchvision ``Resize(int)`` on a PIL image: the shorter side to ``size``, the longer one
    ``int(size * long / short)``; a pair is an exact (H, W)."""
    w, h = img.size
    if isinstance(size, tuple):
        oh, ow = size
    else:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        ow, oh = (new_short, new_long) if w <= h else (new_long, new_short)
    return img if (ow, oh) == (w, h) else img.resize((ow, oh), resample)


def _center_crop(img: Any, size: tuple[int, int]) -> Any:
    """torchvision ``CenterCrop`` on a PIL image (images smaller than the crop are padded with 0)."""
    from PIL import Image

    th, tw = size
    w, h = img.size
    if tw > w or th > h:
        canvas = Image.new(img.mode, (max(w, tw), max(h, th)))
        canvas.paste(img, ((max(w, tw) - w) // 2, (max(h, th) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top, left = round((h - th) / 2.0), round((w - tw) / 2.0)
    return img.crop((left, top, left + tw, top + th))


def image_array(img: Any, recipe: Mapping[str, Any]) -> np.ndarray:
    """One PIL image -> ``(3, H, W)`` float32, as the torch eval transform makes it."""
    from transfuse.data.images import to_rgb

    _, h, w = recipe["input_size"]
    resample = _PIL_FILTERS[recipe["interpolation"]]
    crop = float(recipe["crop_pct"])
    scale = (math.floor(h / crop), math.floor(w / crop))
    img = to_rgb(img)
    if scale[0] == scale[1]:
        img = _resize(img, scale[0], resample)
    else:
        ratio = min(img.height / scale[0], img.width / scale[1])
        img = _resize(img, (round(img.height / ratio), round(img.width / ratio)), resample)
    img = _center_crop(img, (h, w))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(recipe["mean"], np.float32)
    std = np.asarray(recipe["std"], np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1), dtype=np.float32)


class ImagePart:
    """One graph input of an exported image model, fed from PIL images with no torch."""

    def __init__(self, recipe: Mapping[str, Any], names: list[str]):
        self.recipe, self.names = dict(recipe), list(names)

    def feed(self, images: list[Any]) -> dict[str, np.ndarray]:
        return {self.names[0]: np.stack([image_array(im, self.recipe) for im in images])}


def torch_free_parts(meta: Mapping[str, Any]) -> list[ImagePart] | None:
    """The parts of an export whose every input is an image with a recorded recipe, else None
    (the caller rebuilds the backbones for their preprocessing)."""
    parts = meta.get("parts") or []
    if not parts or any((p.get("preprocess") or {}).get("type") != "image" or len(p.get("inputs", [])) != 1
                        for p in parts):
        return None
    return [ImagePart(p["preprocess"], p["inputs"]) for p in parts]


def proba(session: Any, parts: list[ImagePart], dataset: Any, batch_size: int = 32) -> np.ndarray:
    """ONNX probabilities over an image dataset, in order, preprocessed without torch."""
    out = []
    for i in range(0, len(dataset), batch_size):
        images = [dataset.load(j) for j in range(i, min(i + batch_size, len(dataset)))]
        feeds: dict[str, np.ndarray] = {}
        for p in parts:
            feeds.update(p.feed(images))
        out.append(session.run(["proba"], feeds)[0])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
