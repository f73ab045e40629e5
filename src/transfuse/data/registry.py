"""Data sources: ``name -> loader(path, **options) -> Dataset``.

A config names a source (``folder``, ``manifest``, ``fashion_mnist``, ``emoji``, ...) and gives
its ``path`` and ``options``; the loader validates inputs and quarantines bad ones (each with a
reason) instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def load_dataset(source: str, path: str | None = None, **options: Any) -> Any:
    """Load a :class:`~transfuse.data.base.Dataset` from a registered source."""
    load_builtin_sources()
    return DATA_SOURCES.get(source)(path, **options)
