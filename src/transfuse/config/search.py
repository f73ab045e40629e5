"""The ``search``, ``calibration`` and ``export`` sections."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from transfuse.config.base import Section
from transfuse.config.train import FinetuneConfig, HeadConfig
from transfuse.errors import did_you_mean


class ParamSpace(Section):
    """One searched parameter: a float/int range (``log`` for a log scale, ``step`` for a grid)
    or a list of ``choices``. YAML: ``{low: 1e-4, high: 10, log: true}`` or ``{choices: [a, b]}``."""

    type: Literal["float", "int", "categorical"] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpace:
        kind = self.kind
        if kind == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give 'low' and 'high' (a range) or 'choices' (a list)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) > high ({self.high:g}); swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range must be > 0 but low is {self.low:g}; "
                             "raise low (e.g. 1e-6) or set log: false")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log' cannot be combined; drop one")
        return self

    @property
    def kind(self) -> str:
        """``float``, ``int`` or ``categorical`` (inferred when ``type`` is not given)."""
        if self.type is not None:
            return self.type
        return "categorical" if self.choices is not None else "float"

    def grid(self, points: int) -> list[Any]:
        """The values a grid search visits: the choices, the ``step`` ladder, or ``points``
        values evenly spaced (geometrically when ``log``) from low to high."""
        if self.kind == "categorical":
            return list(self.choices or ())
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
        if self.step is not None or self.kind == "int":
            step = self.step or 1.0
            n = math.floor((hi - lo) / step + 1e-9) + 1
            vals = [lo + i * step for i in range(n)]
        elif points == 1 or lo == hi:
            vals = [lo]
        elif self.log:
            vals = [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (points - 1)) for i in range(points)]
        else:
            vals = [lo + i * (hi - lo) / (points - 1) for i in range(points)]
        vals = [min(max(v, lo), hi) for v in vals]  # no float drift past the bounds
        return [round(v) for v in vals] if self.kind == "int" else vals


def default_head_space() -> dict[str, ParamSpace]:
    """The head search space of ``search.space`` when none is given."""
    return {
        "weight_decay": ParamSpace(low=1e-5, high=10.0, log=True),
        "label_smoothing": ParamSpace(low=0.0, high=0.2),
        "class_weight": ParamSpace(choices=("none", "balanced")),
    }


def default_finetune_space() -> dict[str, ParamSpace]:
    """The fine-tuning search space of ``search.finetune_space`` when none is given."""
    return {
        "lr": ParamSpace(low=1e-5, high=1e-3, log=True),
        "layer_decay": ParamSpace(low=0.5, high=1.0),
        "label_smoothing": ParamSpace(low=0.0, high=0.2),
    }


#: Parameters of the fine-tuning space that are not FinetuneConfig fields.
EXTRA_FINETUNE_PARAMS = ("augment_strength",)
_HEAD_PARAMS = [n for n in HeadConfig.model_fields if n != "seed"]
_FINETUNE_PARAMS = [n for n in FinetuneConfig.model_fields
                    if n not in ("accelerator", "devices", "num_nodes", "strategy", "num_workers")
                    ] + list(EXTRA_FINETUNE_PARAMS)


def _check_names(space: dict[str, ParamSpace], allowed: list[str], what: str) -> None:
    for name in space:
        if name not in allowed:
            raise ValueError(f"unknown {what} parameter {name!r}; {did_you_mean(name, allowed)}"
                             f"searchable: {', '.join(allowed)}")


class SearchConfig(Section):
    """Hyperparameter search (Optuna): cheap head trials on cached features first, then
    (optionally) a few fine-tuning trials. The objective is the mean CV score; each fold's score
    is reported as an intermediate value, so a pruner stops weak trials early."""

    enabled: bool = False
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    n_trials: int = Field(100, ge=1, description="head trials in the study (counted over all workers)")
    timeout: float | None = Field(None, gt=0, description="seconds per worker; None = no limit")
    pruner: Literal["none", "median"] = "median"
    grid_points: int = Field(5, ge=1, description="values per float range for the grid sampler")
    backbone: str | None = Field(None, description="whose cached features the heads use; default: the first")
    storage: str | None = Field(None, description="Optuna RDB URL; default sqlite:///RUN_DIR/search/search.db")
    study_name: str | None = Field(None, description="default: the experiment name")
    seed: int | None = Field(None, description="sampler seed; default: the experiment seed")
    heartbeat_s: int = Field(10, ge=1, description="RDB heartbeat; a trial silent for 2x this is retried")
    space: dict[str, ParamSpace] = Field(default_factory=default_head_space,
                                         description="head parameters (HeadConfig fields)")
    finetune_trials: int = Field(0, ge=0, description="fine-tuning trials after the head search; 0 = none")
    finetune_space: dict[str, ParamSpace] = Field(default_factory=default_finetune_space,
                                                  description="FinetuneConfig fields (+ augment_strength)")
    apply_best: bool = Field(True, description="'fit --search' runs the pipeline with the best parameters")
    fast_heads: bool = Field(True, description="linear L-BFGS heads: float32, per-fold features prepared once, "
                                               "warm starts (false: the pipeline's exact float64 fit per trial)")
    head_tol: float = Field(1e-4, gt=0, description="gradient tolerance of the fast head fits (scikit-learn's default)")

    @field_validator("space")
    @classmethod
    def _head_names(cls, v: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        _check_names(v, _HEAD_PARAMS, "head")
        return v

    @field_validator("finetune_space")
    @classmethod
    def _finetune_names(cls, v: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        _check_names(v, _FINETUNE_PARAMS, "fine-tuning")
        return v


class CalibrationConfig(Section):
    """Probability calibration of the chosen model: temperature scaling fitted on its
    out-of-fold probabilities; the temperature is saved with the model and applied by predict."""

    enabled: bool = True
    n_bins: int = Field(15, ge=2, le=100, description="bins of the ECE and the reliability diagram")


class ExportConfig(Section):
    """Export of the chosen model at the end of a run (``transfuse export`` does the same later)."""

    enabled: bool = False
    format: Literal["onnx"] = "onnx"
    int8: bool = Field(False, description="also write an int8 ONNX model (static QDQ for conv nets, dynamic "
                                          "MatMul for transformers), accuracy re-measured")
    int8_method: Literal["auto", "dynamic", "static"] = Field("auto",
                                                              description="auto: by model family (docs/export.md)")
    tolerance: float = Field(1e-4, gt=0, description="largest allowed |p_onnx - p_torch| on real inputs")
    opset: int = Field(18, ge=13)
    parity_samples: int = Field(32, ge=1, description="test inputs used for the parity check")
