"""The ``search:``, ``calibration:`` and ``export:`` sections (pydantic only: cheap to import)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SearchConfig(BaseModel):
    """Hyperparameter search over the pipeline (Optuna)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False


class CalibrationConfig(BaseModel):
    """Probability calibration of the chosen model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False


class ExportConfig(BaseModel):
    """Export of the chosen model at the end of a run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
