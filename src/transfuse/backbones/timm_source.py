"""timm models as backbones: ``timm:NAME`` (weights from a local file, or the hub when online) and
``file:PATH`` (a safetensors file or weights-only state dict, with the architecture named)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transfuse.backbones.base import Backbone
from transfuse.backbones.registry import SOURCES
from transfuse.errors import UserError

log = logging.getLogger(__name__)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from safetensors or a ``torch.save`` file without executing any code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist; give an existing .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        from transfuse.tensorfile import check_safetensors

        check_safetensors(path)
        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusing to run code, corrupt file, ...
        raise UserError(
            f"weights file {str(path)!r} cannot be read safely ({type(e).__name__}); "
            "save it as safetensors or as a plain state dict (torch.save(model.state_dict(), ...))"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return obj


class TimmBackbone(Backbone):
    """A timm model with its classifier removed; preprocessing from its pretrained config.

    ``taps`` > 0: the features are the mean-pooled outputs of the last ``taps`` stages (each
    block stage of an EfficientNet/MobileNet; the ``feature_info`` stages of other models), then
    the model's own pooled features, concatenated (a multi-layer probe's input; the last
    ``model.num_features`` columns equal the plain features).

    ``scales``: more input sizes (px). The preprocessed image is also resized (bilinear) to each,
    and the features of every size are concatenated: all sizes' stage features (``scales`` in
    order, then the own size), then all sizes' final features, so that a tapped view still ends
    with its untapped features."""

    modality = "image"

    def __init__(self, model: nn.Module, image_size: int | None = None, taps: int = 0,
                 scales: Sequence[int] | None = None):
        super().__init__()
        self.model = model
        dropped = [k for k in model.state_dict() if k.startswith(model.pretrained_cfg.get("classifier", "classifier"))]
        model.reset_classifier(0)
        if dropped:
            log.info("head reset: dropped %s", ", ".join(dropped))
        self.taps = int(taps or 0)
        self._tap_kw: dict[str, Any] = {}
        self.feature_dim = int(model.num_features)
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        if image_size:
            cfg["input_size"] = (3, int(image_size), int(image_size))
        self._pre = {
            "input_size": list(cfg["input_size"]),
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "interpolation": cfg["interpolation"],
            "crop_pct": float(cfg["crop_pct"]),
        }
        self.scales = _check_scales(scales, int(self._pre["input_size"][-1]))
        if self.scales:
            self._pre["scales"] = list(self.scales)  # part of the cache key: other features
        if self.taps:
            self._init_taps()
        elif self.scales:
            self.feature_dim = self._dim()
        self._layer_of: dict[str, int] = {}
        try:
            from timm.models import group_parameters

            groups = group_parameters(model, model.group_matcher(coarse=False))
            for lid, names in groups.items():
                for n in names:
                    self._layer_of[n] = int(lid)
        except Exception:  # a model without a group matcher: one layer
            self._layer_of = {}

    def _init_taps(self) -> None:
        import inspect

        fi = getattr(self.model, "forward_intermediates", None)
        if self.taps < 0:
            raise UserError(f"backbone option taps={self.taps}: give a number of stages >= 0 (0: the plain features)")
        if fi is None:
            raise UserError(f"backbone option taps={self.taps}: {type(self.model).__name__} has no "
                            "forward_intermediates in this timm; give taps: 0 (or use linear_probe)")
        if "extra_blocks" in inspect.signature(fi).parameters:  # every block stage, not feature_info's
            self._tap_kw["extra_blocks"] = True
        n_stages = len(self.model.blocks) + 1 if self._tap_kw else len(self.model.feature_info)
        if self.taps >= n_stages:
            raise UserError(f"backbone option taps={self.taps}: {type(self.model).__name__} has "
                            f"{n_stages - 1} stages after its stem; give taps between 1 and {n_stages - 1}")
        self._pre["taps"] = self.taps  # part of the cache key: other features
        self.feature_dim = self._dim()

    def _dim(self) -> int:
        with torch.no_grad():
            return int(self.forward(torch.zeros(1, *self._pre["input_size"])).shape[1])

    def intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last feature map and the ``taps`` stage maps (unpooled) of one input batch."""
        return self.model.forward_intermediates(x, indices=self.taps, **self._tap_kw)

    def _parts(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The pooled stage features (``taps`` of them) and the final features of one input."""
        if not self.taps:
            return [], self.model(x)
        final, stages = self.intermediates(x)
        return [t.mean((2, 3)) for t in stages], self.model.forward_head(final, pre_logits=True)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        # channels-last activations: 1.3x faster CPU training here (weights stay contiguous)
        x = batch.contiguous(memory_format=torch.channels_last)
        if not self.scales:
            stages, final = self._parts(x)
            return torch.cat([*stages, final], 1) if stages else final
        parts = [self._parts(F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False))
                 for s in self.scales] + [self._parts(x)]
        return torch.cat([t for stages, _ in parts for t in stages] + [final for _, final in parts], 1)

    def tapped(self, taps: int, scales: Sequence[int] = ()) -> TimmBackbone:
        """The same network (shared, not copied) with ``taps`` stage features before its own, at
        its own ``scales`` or else at these (input sizes in px; see the class docstring)."""
        out = TimmBackbone(self.model)
        out.taps, out._pre = int(taps), dict(self._pre)
        out.scales = self.scales or _check_scales(list(scales), int(self._pre["input_size"][-1]))
        if out.scales:
            out._pre["scales"] = list(out.scales)
        out._init_taps()
        out.spec, out._weights_hash = self.spec, self._weights_hash
        return out

    def preprocess_config(self) -> dict[str, Any]:
        return dict(self._pre)

    def make_transform(self, train: bool = False, augment: Any = None) -> Callable[[Any], Any]:
        from transfuse.data.image_transforms import build_image_transform

        return build_image_transform(self._pre, train=train, augment=augment)

    def layer_id(self, param_name: str) -> int:
        name = param_name.removeprefix("model.")
        return self._layer_of.get(name, max(self._layer_of.values(), default=0))


def create_timm(name: str, weights: str | None = None, image_size: int | None = None, taps: int = 0,
                scales: Sequence[int] | None = None, **kwargs: Any) -> TimmBackbone:
    """``timm:NAME``: weights from ``weights`` (local file) or, when online, timm's hub weights."""
    import timm

    if name not in timm.list_models() and name not in timm.list_pretrained():
        raise UserError(
            f"timm model {name!r} is unknown to timm {timm.__version__}; "
            "see timm.list_models() for valid names"
        )
    if weights:
        model = timm.create_model(name, pretrained=False, **kwargs)
        _load_into(model, load_state_dict_file(weights), weights)
    else:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:
            raise UserError(
                f"timm:{name}: pretrained weights could not be fetched ({type(e).__name__}); "
                "offline, give a local file with options {weights: PATH}"
            ) from None
    return TimmBackbone(model, image_size=image_size, taps=taps, scales=scales)


def scale_sizes(factors: Sequence[float], size: int) -> list[int]:
    """``factors`` times ``size`` px, rounded, in order: those from 32 to 1024 px other than
    ``size``, each once (``scales`` for a backbone of input ``size``; a tiny image gets fewer)."""
    out: list[int] = []
    for f in factors:
        s = round(f * size)
        if 32 <= s <= 1024 and s != size and s not in out:
            out.append(s)
    return out


def _check_scales(scales: Any, size: int) -> tuple[int, ...]:
    """``scales`` validated: distinct input sizes of 32 to 1024 px other than the own ``size``."""
    if scales is None or scales == []:
        return ()
    ok = isinstance(scales, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in scales)
    if not ok or any(not 32 <= v <= 1024 for v in scales) or len(set(scales)) < len(scales) or size in scales:
        raise UserError(f"backbone option scales={scales!r}: give a list of distinct input sizes from 32 to "
                        f"1024 px other than the backbone's own {size}, e.g. scales: [128, 320]")
    return tuple(int(v) for v in scales)


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], where: str | Path) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False)
    head = model.pretrained_cfg.get("classifier", "classifier")
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise UserError(
            f"weights {str(where)!r} do not fit the architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; name the matching timm architecture with options {{arch: NAME}}"
        )


def create_file(path: str, arch: str | None = None, image_size: int | None = None, taps: int = 0,
                scales: Sequence[int] | None = None, **kwargs: Any) -> TimmBackbone:
    """``file:PATH``: a safetensors / weights-only state dict for the timm architecture ``arch``."""
    import timm

    if not arch:
        raise UserError(f"backbone file:{path}: name its architecture, e.g. options {{arch: tf_efficientnet_lite0}}")
    sd = load_state_dict_file(path)
    num_classes = 0
    for k, v in sd.items():
        if k.endswith("classifier.weight") or k.endswith("head.fc.weight") or k == "fc.weight":
            num_classes = v.shape[0]
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes or 1000, **kwargs)
    _load_into(model, sd, path)
    return TimmBackbone(model, image_size=image_size, taps=taps, scales=scales)


SOURCES.add("timm", create_timm)
SOURCES.add("file", create_file)
