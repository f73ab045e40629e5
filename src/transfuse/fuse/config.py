"""The ``fuse:`` section of an experiment (pydantic only: importing it stays cheap)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FuseConfig(BaseModel):
    """Which fusions a run tries over its candidates (chosen by CV like any candidate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
