"""transfuse: transfer learning, model fusion and optimization.

``transfuse.fit``, ``transfuse.load``, ``transfuse.Run`` and ``transfuse.TransfuseClassifier`` are
the Python API (:mod:`transfuse.api`); they are imported on first use, so ``import transfuse``
stays light.
"""

from typing import Any

__version__ = "0.1.0"

from transfuse.errors import UserError  # noqa: E402

_API = ("Run", "TransfuseClassifier", "fit", "load")

__all__ = ["UserError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        # importlib, not an import statement: the root package is the public facade, and a layer
        # below that reads ``transfuse.__version__`` must not count as depending on the API above it
        import importlib

        return getattr(importlib.import_module("transfuse.api"), name)
    raise AttributeError(f"module 'transfuse' has no attribute {name!r}")
