"""transfuse: transfer learning, model fusion and optimization."""

__version__ = "0.1.0"

from transfuse.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
