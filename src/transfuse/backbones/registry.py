"""Backbone sources and names: ``bundled:NAME``, ``timm:NAME``, ``file:PATH``, ``hf:PATH``, ...

A *source* is a function ``(rest_of_spec, **options) -> Backbone``. The ``bundled`` source looks
``NAME`` up in :data:`BUNDLED`, where each entry is a factory ``(**options) -> Backbone``.
Plain names (no ``source:``) are looked up in :data:`SPECIAL` (e.g. ``tfidf``, ``scratch_cnn``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transfuse.errors import UserError
from transfuse.registry import Registry, import_modules

BUNDLED: Registry[Callable[..., Any]] = Registry("bundled backbone")
SOURCES: Registry[Callable[..., Any]] = Registry("backbone source")
SPECIAL: Registry[Callable[..., Any]] = Registry("backbone")


def _bundled(name: str, **options: Any) -> Any:
    return BUNDLED.get(name)(**options)


SOURCES.add("bundled", _bundled)


def all_names() -> list[str]:
    """Every name a user can give: ``bundled:*`` entries, source prefixes and special names."""
    return (
        [f"bundled:{n}" for n in BUNDLED.names()]
        + [f"{s}:..." for s in SOURCES.names() if s != "bundled"]
        + SPECIAL.names()
    )


def create_backbone(spec: str, **options: Any) -> Any:
    """Build the backbone named by ``spec`` (e.g. ``bundled:efficientnet_lite0``)."""
    _load_builtin_modules()
    if ":" in spec:
        source, _, rest = spec.partition(":")
        if source not in SOURCES:
            raise UserError(
                f"backbone {spec!r}: unknown source {source!r}; valid sources: "
                f"{', '.join(SOURCES.names())}; valid names: {', '.join(all_names())}"
            )
        if source == "bundled" and rest not in BUNDLED:
            raise UserError(
                f"unknown backbone {spec!r}; valid names: {', '.join(all_names())}"
            )
        model = SOURCES.get(source)(rest, **options)
    elif spec in SPECIAL:
        model = SPECIAL.get(spec)(**options)
    else:
        raise UserError(
            f"unknown backbone {spec!r}; give SOURCE:NAME with a source among "
            f"{', '.join(SOURCES.names())}; valid names: {', '.join(all_names())}"
        )
    model.spec = spec
    return model


def _load_builtin_modules() -> None:
    import_modules(BUILTIN_MODULES)


#: Modules whose import registers backbones. Each module registers itself on import.
BUILTIN_MODULES: list[str] = [
    "transfuse.backbones.efficientnet",
    "transfuse.backbones.timm_source",
    "transfuse.backbones.audio",
    "transfuse.backbones.text",
    "transfuse.backbones.pixels",
]


#: Special names whose backbone is a raw-input estimator (``is_raw_estimator``): known without
#: building it, so a run can order its candidates before loading any weights.
RAW_ESTIMATORS: set[str] = set()


def is_raw_estimator(spec: str) -> bool:
    _load_builtin_modules()
    return spec in RAW_ESTIMATORS


def short_name(spec: str) -> str:
    """A backbone spec as a candidate name prefix (``bundled:minilm_l6`` -> ``minilm_l6``)."""
    return spec.removeprefix("bundled:")


def resolve_options(options: dict[str, Any], modality: str, image_size: int | None) -> dict[str, Any]:
    """A backbone's options with the run's ``preprocess.image_size`` applied to image backbones."""
    opts = dict(options)
    if modality == "image" and image_size:
        opts.setdefault("image_size", image_size)
    return opts


def finetune_options(options: dict[str, Any], modality: str, image_size: int | None,
                     finetune_size: int | None) -> dict[str, Any] | None:
    """The options a fine-tune of a backbone is built with where ``train.finetune.image_size``
    (``finetune_size``) moves it off the run's ``image_size``: image backbones without their own
    ``image_size`` option. None: its fine-tunes use the backbone as the run builds it."""
    if modality != "image" or not finetune_size or "image_size" in options or finetune_size == image_size:
        return None
    return {**resolve_options(options, modality, image_size), "image_size": finetune_size}
