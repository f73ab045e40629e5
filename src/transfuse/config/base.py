"""The base of every config section and the defaults helper estimators use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable (hashable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def field_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """``{field: default}`` of ``model``'s fields with a plain default: the single source of an
    estimator's ``__init__`` defaults (``weight_decay: float = DEFAULTS["weight_decay"]``)."""
    return {k: f.default for k, f in model.model_fields.items()
            if not f.is_required() and f.default_factory is None}
