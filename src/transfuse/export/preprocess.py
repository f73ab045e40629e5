"""The eval-time preprocessing of exported models without torch: what ``predict --engine onnx``
runs (importing torch alone costs seconds). Images: the timm-style transform in PIL + numpy;
texts: the tokenizer with the ``tokenizers`` library; audio: Whisper-style log-mel in numpy
(:mod:`transfuse.data.audio_transforms`, the backbones' own code); a multimodal model: each part
on its own column.

Images: the recipe reproduces :func:`transfuse.data.image_transforms.build_image_transform` with
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

    modality = "image"

    def __init__(self, recipe: Mapping[str, Any], names: list[str]):
        self.recipe, self.names = dict(recipe), list(names)

    def feed(self, images: list[Any]) -> dict[str, np.ndarray]:
        return {self.names[0]: np.stack([image_array(im, self.recipe) for im in images])}


class AudioPart:
    """The ``input`` of an exported audio model (Whisper-style log-mel or the waveform), from the
    decoded ``(waveform, sample_rate)`` in numpy + scipy alone
    (:func:`transfuse.data.audio_transforms.recipe_input`: the backbones' own eval transform)."""

    modality = "audio"

    def __init__(self, recipe: Mapping[str, Any], names: list[str]):
        self.recipe, self.names = dict(recipe), list(names)

    def feed(self, clips: list[Any]) -> dict[str, np.ndarray]:
        from transfuse.data.audio_transforms import recipe_input

        return {self.names[0]: np.stack([recipe_input(c, self.recipe) for c in clips])}


def _part(p: Mapping[str, Any]) -> Any:
    """The torch-free feeder of one exported part, or None when its recipe is not one of ours."""
    from pathlib import Path

    r = p.get("preprocess") or {}
    n = len(p.get("inputs", []))
    if r.get("type") == "image" and n == 1:
        return ImagePart(r, p["inputs"])
    if r.get("type") == "text" and r.get("tokenizer_file") and n == 2 and Path(r["tokenizer_file"]).is_file():
        return TextPart(r, p["inputs"])
    if r.get("type") == "audio" and n == 1:
        from transfuse.data.audio_transforms import audio_recipe

        return AudioPart(r, p["inputs"]) if audio_recipe(r) is not None else None
    return None


def torch_free_parts(meta: Mapping[str, Any]) -> list[Any] | None:
    """The parts of an export whose every input has a recorded recipe this module runs (images;
    texts with a ``tokenizer.json``; Whisper-style log-mel or waveform audio at 16 kHz), else None
    (the caller rebuilds the backbones)."""
    out = [_part(p) for p in meta.get("parts") or []]
    return out if out and all(p is not None for p in out) else None


def proba(session: Any, parts: list[Any], dataset: Any, batch_size: int = 32) -> np.ndarray:
    """ONNX probabilities over a dataset, in order, preprocessed without torch. In a multimodal
    dataset (each item ``{modality: decoded input}``) every part reads its own modality."""
    out = []
    for i in range(0, len(dataset), batch_size):
        items = [dataset.load(j) for j in range(i, min(i + batch_size, len(dataset)))]
        feeds: dict[str, np.ndarray] = {}
        for p in parts:
            feeds.update(p.feed([it[p.modality] if isinstance(it, dict) else it for it in items]))
        out.append(session.run(["proba"], feeds)[0])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# ------------------------------------------------------------------------------------- texts

def text_recipe(backbone: Any) -> dict[str, Any] | None:
    """The tokenisation of a text backbone (:class:`~transfuse.backbones.text.bert.TextBackbone`)
    as data, when its tokenizer is a fast tokenizer with a ``tokenizer.json`` on disk: the file,
    the special ids put around a text, ``max_length``, ``truncation`` and the padding id. None
    otherwise (the caller rebuilds the backbone)."""
    from pathlib import Path

    tok = getattr(backbone, "tokenizer", None)
    src = Path(str(getattr(tok, "name_or_path", "") or ""))
    if tok is None or not (src / "tokenizer.json").is_file() or not getattr(tok, "is_fast", False):
        return None
    return {"type": "text", "tokenizer_file": str((src / "tokenizer.json").resolve()),
            "prefix_ids": [int(i) for i in backbone._prefix], "suffix_ids": [int(i) for i in backbone._suffix],
            "max_length": int(backbone.max_length), "truncation": str(backbone.truncation),
            "pad_id": int(backbone.pad_token_id), "lowercase": bool(getattr(tok, "do_lower_case", False)),
            "steps": "tokenizer.json without special tokens; cut to max_length - specials by truncation; "
                     "prefix + ids + suffix; right-pad with pad_id; attention_mask 1 on tokens"}


class TextPart:
    """The ``input_ids`` / ``attention_mask`` inputs of an exported text model, from the
    ``tokenizers`` library alone (no torch, no transformers): the same ids as the backbone's
    ``Tokenize`` + ``collate``."""

    modality = "text"

    def __init__(self, recipe: Mapping[str, Any], names: list[str]):
        from tokenizers import Tokenizer

        self.recipe, self.names = dict(recipe), list(names)
        self.tok = Tokenizer.from_file(recipe["tokenizer_file"])
        self.tok.no_truncation()
        self.tok.no_padding()

    def _tokens(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def _ids(self, text: str, budget: int) -> list[int]:
        """As ``Tokenize._ids``: the first tokens of a long text from ever longer prefixes."""
        n = 16 * (budget + 1)
        while n < len(text):
            cut = text.rfind(" ", 0, n)
            if cut > 0:
                ids = self._tokens(text[:cut])
                if len(ids) > budget:
                    return ids
            n *= 4
        return self._tokens(text)

    def encode(self, text: str) -> list[int]:
        r = self.recipe
        pre, suf = list(r["prefix_ids"]), list(r["suffix_ids"])
        budget = int(r["max_length"]) - len(pre) - len(suf)
        ids = self._ids(text, budget) if r["truncation"] == "right" else self._tokens(text)
        if len(ids) > budget:
            if r["truncation"] == "right":
                ids = ids[:budget]
            elif r["truncation"] == "left":
                ids = ids[len(ids) - budget:]
            else:
                head = budget // 4
                ids = ids[:head] + ids[len(ids) - (budget - head):]
        return pre + ids + suf

    def feed(self, texts: list[str]) -> dict[str, np.ndarray]:
        rows = [self.encode(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), int(self.recipe["pad_id"]), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return dict(zip(self.names, (ids, mask), strict=True))
