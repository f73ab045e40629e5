"""Where transfuse keeps its caches (features, converted sample data)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Root of transfuse's caches: ``$TRANSFUSE_HOME`` or ``~/.cache/transfuse``."""
    return Path(os.environ.get("TRANSFUSE_HOME", Path.home() / ".cache" / "transfuse"))


def feature_cache_dir() -> Path:
    """Feature cache: ``$TRANSFUSE_FEATURE_CACHE`` or ``<home>/features``."""
    env = os.environ.get("TRANSFUSE_FEATURE_CACHE")
    return Path(env) if env else home() / "features"


def data_dir() -> Path:
    return home() / "data"


def dir_size(path: Path) -> int:
    """Total size in bytes of the files below ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
