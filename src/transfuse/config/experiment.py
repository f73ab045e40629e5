"""The whole experiment (``transfuse run CONFIG.yaml``) and its small top-level sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from transfuse.config.base import Section
from transfuse.config.data import AugmentConfig, DataConfig, PreprocessConfig, SplitConfig
from transfuse.config.fuse import FuseConfig
from transfuse.config.search import CalibrationConfig, ExportConfig, SearchConfig
from transfuse.config.train import MAX_SEED, AdaptConfig, TrainConfig


class BackboneConfig(Section):
    """One backbone: a registered name (``bundled:...``, ``timm:...``, ...) and its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class EvaluateConfig(Section):
    """The metric that ranks candidates."""

    metric: Literal["accuracy", "macro_f1"] = "accuracy"


class OutputConfig(Section):
    """Where the run folder goes (``null``: under ``runs/``)."""

    dir: str | None = None


#: What each preset tries (``budget.preset``); under a time limit the planner keeps what fits,
#: in this order. See docs/decisions.md for why ``medium`` is the default with a time limit.
PRESETS: dict[str, list[str]] = {
    "fast": ["linear_probe"],
    "medium": ["linear_probe", "lp_ft"],
    "best": ["linear_probe", "lp_ft", "finetune"],
}
#: Image runs' presets add this after ``linear_probe``: one more head on the same embedding pass.
IMAGE_PRESET_EXTRA = "multilayer_probe"
#: ... whose view image presets give these ``adapt.scales`` (128 and 320 px beside 224): +1.1 to
#: +1.8 CV points on Fashion-MNIST, +1.7 on emoji, for about 3x the embedding (docs/decisions.md).
IMAGE_PRESET_SCALES = [0.57, 1.43]
#: ... and under a time limit these ``train.finetune`` settings (each unless the config gives it):
#: fine-tunes at 112 px, so that every fold and the refit fit, on all their rows (no inner split),
#: at a higher lr; +1.5 points on Fashion-MNIST dev images as a fusion member (docs/decisions.md).
IMAGE_BUDGET_FINETUNE = {"image_size": 112, "lr": 3e-4, "inner_val": 0.0}


class BudgetConfig(Section):
    """A time limit for the whole run and a preset of strategies (``fit --time-limit/--preset``).

    ``preset`` fills ``adapt.strategies`` when the config does not list them (``medium`` when only
    a time limit is given). With ``time_limit``, the planner measures each backbone's embedding and
    fine-tuning step costs first and keeps what fits: cheap candidates first, fine-tuning with the
    epochs that fit, fusions, then the report; what it skipped is listed with the reason."""

    time_limit: float | None = Field(None, gt=0, description="seconds for the whole command, start-up included")
    preset: Literal["fast", "medium", "best"] | None = None


class ExperimentConfig(Section):
    """A whole experiment: ``transfuse run CONFIG.yaml``."""

    name: str = "experiment"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = AugmentConfig()
    backbones: list[BackboneConfig] = Field(min_length=1)
    adapt: AdaptConfig = AdaptConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    fuse: FuseConfig = FuseConfig()
    search: SearchConfig = SearchConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    export: ExportConfig = ExportConfig()
    output: OutputConfig = OutputConfig()
    budget: BudgetConfig = BudgetConfig()

    @model_validator(mode="before")
    @classmethod
    def _preset_strategies(cls, v: Any) -> Any:
        """``budget.preset`` (or ``medium`` under a time limit) lists the strategies when
        ``adapt.strategies`` is not given (image runs: with ``multilayer_probe`` and, unless given,
        its ``adapt.scales``; under a time limit also :data:`IMAGE_BUDGET_FINETUNE`'s settings,
        each unless given); the resolved config then lists them."""
        if not isinstance(v, dict) or not isinstance(v.get("budget"), dict):
            return v
        b = v["budget"]
        preset = b.get("preset") or ("medium" if b.get("time_limit") is not None else None)
        adapt = v.get("adapt") if v.get("adapt") is not None else {}
        if preset not in PRESETS or not isinstance(adapt, dict) or "strategies" in adapt:
            return v
        strategies = list(PRESETS[preset])
        data = v.get("data") or {}
        if (data.get("modality", "image") if isinstance(data, dict) else getattr(data, "modality", "image")) == "image":
            strategies.insert(strategies.index("linear_probe") + 1, IMAGE_PRESET_EXTRA)
            adapt = {"scales": list(IMAGE_PRESET_SCALES), **adapt}
            train = v.get("train") if v.get("train") is not None else {}
            ft = train.get("finetune") if isinstance(train, dict) and train.get("finetune") is not None else {}
            if b.get("time_limit") is not None and isinstance(ft, dict):
                v = {**v, "train": {**train, "finetune": {**IMAGE_BUDGET_FINETUNE, **ft}}}
        return {**v, "adapt": {**adapt, "strategies": strategies}}

    @model_validator(mode="before")
    @classmethod
    def _image_baseline(cls, v: Any) -> Any:
        """``adapt.baseline`` (default on): an image run gets the ``pixels`` candidate beside its
        backbones (listed in the resolved config, so a resumed run is the same experiment)."""
        if not isinstance(v, dict):
            return v
        adapt, data = v.get("adapt") or {}, v.get("data") or {}
        on = adapt.get("baseline", True) if isinstance(adapt, dict) else getattr(adapt, "baseline", True)
        modality = data.get("modality", "image") if isinstance(data, dict) else getattr(data, "modality", "image")
        bbs = v.get("backbones")
        if on is not True or modality != "image" or not isinstance(bbs, list) or not bbs:
            return v
        names = [b if isinstance(b, str) else (b.get("name") if isinstance(b, dict) else getattr(b, "name", None))
                 for b in bbs]
        return v if "pixels" in names else {**v, "backbones": [*bbs, "pixels"]}

    @field_validator("backbones", mode="before")
    @classmethod
    def _names_to_dicts(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [{"name": b} if isinstance(b, str) else b for b in v]
        return v
