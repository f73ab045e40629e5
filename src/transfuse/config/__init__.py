"""The experiment schema (pydantic), validated before any work starts.

Every setting is defined once, here; validating a config imports no heavy library (no torch) and
nothing of transfuse but :mod:`transfuse.errors`. Every problem of a config is reported at once
(:func:`validate_config`), each naming the key, the value, what is allowed and the fix.
"""

from transfuse.config.base import Section, field_defaults
from transfuse.config.data import (
    AudioAugment,
    AugmentConfig,
    DataConfig,
    ImageAugment,
    PreprocessConfig,
    SplitConfig,
    TextCleaning,
)
from transfuse.config.experiment import (
    PRESETS,
    BackboneConfig,
    BudgetConfig,
    EvaluateConfig,
    ExperimentConfig,
    OutputConfig,
)
from transfuse.config.fuse import (
    DistillOptions,
    EnsembleName,
    FeatureFusionConfig,
    FeatureFusionOptions,
    FuseConfig,
    JointOptions,
    NonNegFloat,
    PositiveFloat,
    SoupMethod,
    SoupOptions,
    UnitFloat,
    UnlabelledSource,
)
from transfuse.config.load import (
    apply_overrides,
    config_to_yaml,
    load_config,
    load_yaml,
    parse_override,
    read_yaml,
    validate_config,
)
from transfuse.config.problems import format_validation_error, validation_error, validation_problems
from transfuse.config.search import (
    EXTRA_FINETUNE_PARAMS,
    CalibrationConfig,
    ExportConfig,
    ParamSpace,
    SearchConfig,
    default_finetune_space,
    default_head_space,
)
from transfuse.config.train import (
    STRATEGIES,
    TRAINING_STRATEGIES,
    AdaptConfig,
    ClassWeight,
    FinetuneConfig,
    HeadConfig,
    HeadFit,
    HeadKind,
    Optimizer,
    PartialConfig,
    Strategy,
    TrainConfig,
    Variant,
)

__all__ = [
    "EXTRA_FINETUNE_PARAMS", "PRESETS", "STRATEGIES", "TRAINING_STRATEGIES", "AdaptConfig", "AudioAugment",
    "AugmentConfig", "BackboneConfig", "BudgetConfig",
    "CalibrationConfig", "ClassWeight", "DataConfig", "DistillOptions", "EnsembleName", "EvaluateConfig",
    "ExperimentConfig", "ExportConfig", "FeatureFusionConfig", "FeatureFusionOptions", "FinetuneConfig",
    "FuseConfig", "HeadConfig", "HeadFit", "HeadKind", "ImageAugment", "JointOptions", "NonNegFloat",
    "Optimizer", "OutputConfig", "ParamSpace", "PartialConfig", "PositiveFloat", "PreprocessConfig", "SearchConfig",
    "Section", "SoupMethod", "SoupOptions", "SplitConfig", "Strategy", "TextCleaning", "TrainConfig", "UnitFloat",
    "Variant",
    "UnlabelledSource",
    "apply_overrides", "config_to_yaml", "default_finetune_space", "default_head_space", "field_defaults",
    "format_validation_error", "load_config", "load_yaml", "parse_override", "read_yaml", "validate_config",
    "validation_error", "validation_problems",
]
