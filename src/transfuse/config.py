"""The experiment schema (pydantic), validated before any work starts.

Every section lives here, so validating a config imports no heavy library (under 2 s) and each
setting has one definition. Errors are reported on one line naming the key, the value, the allowed
values and the fix (:func:`format_validation_error`).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from transfuse.errors import UserError
from transfuse.evaluate.search_config import (
    CalibrationConfig,
    ExportConfig,
    SearchConfig,
)
from transfuse.fuse.config import FuseConfig

_HEAD_LR_MULT = re.compile(r"^\s*(\d+(\.\d*)?|\.\d+)\s*x\s*$")
Strategy = Literal["linear_probe", "finetune", "lp_ft"]
STRATEGIES: tuple[str, ...] = ("linear_probe", "finetune", "lp_ft")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    """Where the labelled data comes from (``source`` is a registered data source)."""

    source: str = "folder"
    path: str | None = None
    modality: Literal["image", "text", "audio", "multimodal"] = "image"
    options: dict[str, Any] = Field(default_factory=dict)
    #: An external test set (another source or a shifted domain) instead of a split of ``path``.
    test_source: str | None = None
    test_path: str | None = None
    test_options: dict[str, Any] = Field(default_factory=dict)


class SplitConfig(Section):
    folds: int = Field(5, ge=2, le=20)
    test_size: float = Field(0.2, gt=0.0, lt=0.9)


class ImageAugment(Section):
    """Training-time augmentation (ignored at evaluation). ``enabled: false`` turns it all off."""

    enabled: bool = True
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a vertical flip")
    random_resized_crop: tuple[float, float] | None = Field(
        (0.5, 1.0), description="area fraction range of the random crop; null for resize + center crop"
    )
    crop_ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="aspect ratio range of the random crop"
    )
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="max rotation in degrees (both ways)")
    color_jitter: float = Field(0.2, ge=0.0, le=1.0, description="brightness/contrast/saturation strength")
    hue: float = Field(0.0, ge=0.0, le=0.5, description="hue jitter")
    randaugment: bool = False
    randaugment_ops: int = Field(2, ge=1, le=10)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="probability of erasing a random patch")

    @model_validator(mode="after")
    def _check_ranges(self) -> ImageAugment:
        if self.random_resized_crop is not None:
            lo, hi = self.random_resized_crop
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(
                    f"random_resized_crop must be (low, high) with 0 < low <= high <= 1, got {self.random_resized_crop}"
                )
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio must be (low, high) with 0 < low <= high, got {self.crop_ratio}")
        return self




class AudioAugment(Section):
    """Training-time audio augmentation (config key ``augment.audio``). Each step fires with its
    probability; set a probability to 0 to switch the step off."""

    noise_prob: float = Field(0.5, ge=0, le=1, description="chance of adding white noise")
    snr_db: tuple[float, float] = Field((10.0, 30.0), description="noise SNR range in dB")
    shift_prob: float = Field(0.5, ge=0, le=1, description="chance of a time shift")
    shift_seconds: float = Field(0.1, ge=0, description="largest shift, either direction")
    gain_prob: float = Field(0.5, ge=0, le=1, description="chance of a gain change")
    gain_db: float = Field(6.0, ge=0, description="largest gain change, up or down, in dB")
    speed_prob: float = Field(0.3, ge=0, le=1, description="chance of a speed/pitch change")
    speed: tuple[float, float] = Field((0.9, 1.1), description="speed factor range (pitch moves too)")
    specaugment_prob: float = Field(0.5, ge=0, le=1, description="chance of SpecAugment masks")
    freq_masks: int = Field(2, ge=0, description="SpecAugment frequency masks")
    freq_width: int = Field(8, ge=0, description="widest frequency mask, in mel bins")
    time_masks: int = Field(2, ge=0, description="SpecAugment time masks")
    time_width: int = Field(10, ge=0, description="widest time mask, in frames (10 ms each)")

    @model_validator(mode="after")
    def _ranges(self) -> AudioAugment:
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db={list(self.snr_db)} must be [low, high] with low <= high")
        if not 0 < self.speed[0] <= self.speed[1] <= 4:
            raise ValueError(f"speed={list(self.speed)} must be [low, high] with 0 < low <= high <= 4")
        return self


class AugmentConfig(Section):
    image: ImageAugment = ImageAugment()
    audio: AudioAugment = AudioAugment()


class TextCleaning(Section):
    """How texts are cleaned before use (config key ``preprocess.text``).

    Steps run in this order: e-mail parsing, HTML stripping, Unicode NFKC, whitespace collapse,
    then the length limit. A text longer than ``max_chars`` is cut to ``max_chars`` (``on_long:
    truncate``, logged; a tokenizer reads only the first few hundred tokens anyway) or left out
    (``on_long: quarantine``).
    """

    unicode_nfkc: bool = True
    collapse_whitespace: bool = True
    strip_html: bool = False
    strip_email_headers: bool = False
    max_chars: int = Field(20_000, ge=1)
    on_long: Literal["truncate", "quarantine"] = "truncate"


class PreprocessConfig(Section):
    #: Override the backbone's input resolution (images); ``null`` keeps the pretrained size.
    image_size: int | None = Field(None, ge=16, le=1024)
    text: TextCleaning = TextCleaning()


class BackboneConfig(Section):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class AdaptConfig(Section):
    strategies: list[Strategy] = Field(default_factory=lambda: ["linear_probe"], min_length=1)


class HeadFit(Section):
    """What every head fitted on cached features shares (a probe head, a feature-fusion head)."""

    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-3, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weight: Literal["none", "balanced"] = "none"
    max_iter: int = Field(200, ge=1)
    lr: float = Field(1e-2, gt=0.0)
    optimizer: Literal["auto", "lbfgs", "adam"] = "auto"
    tol: float = Field(1e-7, gt=0.0)
    seed: int = 0


class HeadConfig(HeadFit):
    """Validated hyper-parameters of a :class:`HeadClassifier` (frozen, hashable)."""

    kind: Literal["linear", "mlp"] = "linear"
    standardize: bool = True


class FinetuneConfig(Section):
    """Settings of one fine-tuning fit (frozen, hashable, unknown keys rejected)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, ge=0, description="peak lr of the backbone's last layer")
    head_lr: float | str = Field("auto", description="absolute lr (0.001), a multiple of lr ('10x'), or 'auto': "
                                                    "10x for a fresh head, 1x for LP-FT's trained head")
    weight_decay: float = Field(0.05, ge=0)
    layer_decay: float = Field(1.0, gt=0, le=1, description="lr ratio between successive layers; 1 = off")
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of the steps with a linear lr warm-up")
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weight: Literal["none", "balanced"] | tuple[float, ...] = "none"
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the head")
    patience: int | None = Field(3, ge=1, description="early-stopping patience in epochs; None = off")
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    freeze_bn: bool = Field(True, description="keep BatchNorm in eval mode (running statistics fixed); see docs/decisions.md")
    max_train_batches: int | None = Field(None, ge=1, description="cap per epoch (tests, smoke runs)")
    gradient_clip: float | None = Field(None, gt=0)
    num_workers: int | Literal["auto"] = "auto"

    @field_validator("head_lr", mode="before")
    @classmethod
    def _check_head_lr(cls, v: Any) -> float | str:
        if isinstance(v, str):
            if v == "auto" or _HEAD_LR_MULT.match(v):
                return v.replace(" ", "")
            try:
                v = float(v)
            except ValueError:
                raise ValueError(
                    f"head_lr must be a learning rate (e.g. 0.001), a multiple of lr like '10x', or 'auto'; got {v!r}"
                ) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"head_lr must be a non-negative number or a multiple like '10x'; got {v!r}")
        return float(v)

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"devices must be 'auto' or an integer >= 1; got {v}")
        return v

    def resolved_head_lr(self, head_trained: bool = False) -> float:
        """The head's learning rate as a number (``auto``: 1x if ``head_trained`` else 10x)."""
        if self.head_lr == "auto":
            return (1.0 if head_trained else 10.0) * self.lr
        if isinstance(self.head_lr, str):
            return float(self.head_lr[:-1]) * self.lr
        return float(self.head_lr)


class TrainConfig(Section):
    head: HeadConfig = HeadConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    embed_batch_size: int = Field(64, ge=1)


class EvaluateConfig(Section):
    metric: Literal["accuracy", "macro_f1"] = "accuracy"


class OutputConfig(Section):
    dir: str | None = None


class ExperimentConfig(Section):
    """A whole experiment: ``transfuse run CONFIG.yaml``."""

    name: str = "experiment"
    seed: int = 0
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

    @field_validator("backbones", mode="before")
    @classmethod
    def _names_to_dicts(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [{"name": b} if isinstance(b, str) else b for b in v]
        return v


# ----------------------------------------------------------------------------------- errors

def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section at ``loc`` (the parent of an unknown key)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        sub = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            sub = [ann]
        if not sub:
            return []
        current = sub[0]
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line for the first error: key, value, what is allowed, the fix."""
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(ExperimentConfig, loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return (f"{source}: unknown key {key!r}{hint} valid keys here: {', '.join(allowed)}")
    if e["type"] == "missing":
        return f"{source}: key {key!r} is required; add it to the config"
    value = e.get("input")
    return f"{source}: key {key!r} has invalid value {value!r}: {e['msg']}"


# ----------------------------------------------------------------------------------- loading

def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], parsed YAML value)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.finetune.epochs=3")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``--set`` overrides applied (the caller's dict is untouched)."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; give the path of a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {str(path)!r}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {str(path)!r}: the top level must be a mapping of keys")
    return raw


def validate_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate a YAML config."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_config(raw, source=str(path))


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
