"""Data sources, validation, splits and preprocessing."""

from transfuse.data.base import Dataset, Quarantined

__all__ = ["Dataset", "Quarantined"]
