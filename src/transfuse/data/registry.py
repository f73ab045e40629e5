"""Data sources: ``name -> loader(path, **options) -> Dataset``.

A config names a source (``folder``, ``manifest``, ``fashion_mnist``, ``emoji``, ...) and gives
its ``path`` and ``options``; the loader validates inputs and quarantines bad ones (each with a
reason) instead of failing the run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from transfuse.errors import UserError, did_you_mean
from transfuse.registry import Registry, import_modules

DATA_SOURCES: Registry[Callable[..., Any]] = Registry("data source")

#: Modules whose import registers data sources.
BUILTIN_MODULES: list[str] = [
    "transfuse.data.images",
    "transfuse.data.audio",
    "transfuse.data.text",
    "transfuse.data.multimodal",
]

def load_builtin_sources() -> None:
    import_modules(BUILTIN_MODULES)


def source_options(source: str) -> list[str] | None:
    """The options data source ``source`` accepts (its keyword parameters after ``path``), or
    None when it takes any (``**options``). The loader's signature is its schema."""
    load_builtin_sources()
    params = list(inspect.signature(DATA_SOURCES.get(source)).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_options(source: str, options: Mapping[str, Any], where: str = "data.options") -> None:
    """A one-line error, with a did-you-mean and the valid names, for an option ``source`` does not
    take (``--set data.options.valdate=false`` on ``folder``)."""
    valid = source_options(source)
    if valid is None:
        return
    for key in options:
        if key not in valid:
            raise UserError(f"{where}.{str(key)[:80]}: data source {source!r} has no such option; "
                            f"{did_you_mean(key, valid)}"
                            f"valid options: {', '.join(valid) or 'none'}")


def load_dataset(source: str, path: str | None = None, **options: Any) -> Any:
    """Load a :class:`~transfuse.data.base.Dataset` from a registered source (its options checked
    against the source's own parameters first)."""
    check_options(source, options, "options")
    return DATA_SOURCES.get(source)(path, **options)
