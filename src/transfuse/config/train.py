"""Training sections: ``adapt`` and ``train`` (the probe head and fine-tuning)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from transfuse.config.base import Section
from transfuse.errors import did_you_mean

Strategy = Literal["linear_probe", "multilayer_probe", "finetune", "lp_ft", "partial_ft"]
STRATEGIES: tuple[str, ...] = ("linear_probe", "multilayer_probe", "finetune", "lp_ft", "partial_ft")
#: Strategies that train backbone weights (they need a trainable backbone).
TRAINING_STRATEGIES: tuple[str, ...] = ("finetune", "lp_ft", "partial_ft")
HeadKind = Literal["linear", "mlp"]
ClassWeight = Literal["none", "balanced"]
Optimizer = Literal["auto", "lbfgs", "adam"]
_HEAD_LR_MULT = re.compile(r"^\s*(\d+(\.\d*)?|\.\d+)\s*x\s*$")


_SAME_SIZE = "a backbone's fine-tunes share one image size, so that its soups average like networks"
_SAME_ROWS = "each fine-tune chooses its epochs on the run's inner split, which greedy soups choose on too"
_RUN_WIDE = "a run's fine-tunes share one set of devices and processes"
#: ``train.finetune`` keys a variant cannot change, and why: every fine-tune of a backbone chooses
#: its epochs on the same inner validation rows, at the same image size; the devices are the run's.
VARIANT_FIXED = {"inner_val": _SAME_ROWS, "image_size": _SAME_SIZE, "accelerator": _RUN_WIDE, "devices": _RUN_WIDE,
                 "num_nodes": _RUN_WIDE, "strategy": _RUN_WIDE}
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # its own folder name and one `--set` key
#: Largest seed a run or a variant may name: fold k of one seeded s trains with s + k (k < 20), and
#: every seeded library here takes seeds below 2**31 (Lightning and scikit-learn: below 2**32).
MAX_SEED = 2**31 - 1 - 100


class Variant(Section):
    """One more fine-tuning candidate of every backbone (``adapt.variants``): ``strategy`` trained
    with its own ``seed`` and the ``train.finetune`` keys in ``finetune`` (the others as the run
    sets them). It is a soup ingredient beside the backbone's other fine-tunes."""

    strategy: Literal["finetune", "lp_ft"]
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="training seed (a fresh head's "
                             "init, batch order, augmentation, dropout; the inner validation split stays "
                             "the run's); null: the run's seed")
    finetune: dict[str, Any] = Field(default_factory=dict, description="train.finetune keys this variant "
                                     "changes (all but inner_val and the device keys)")

    @field_validator("finetune")
    @classmethod
    def _check_finetune(cls, v: dict[str, Any]) -> dict[str, Any]:
        allowed = [n for n in FinetuneConfig.model_fields if n not in VARIANT_FIXED]
        for name in v:
            if name in VARIANT_FIXED:
                raise ValueError(f"{name!r} cannot differ between variants ({VARIANT_FIXED[name]}); "
                                 f"set train.finetune.{name} instead")
            if name not in allowed:
                raise ValueError(f"unknown key {name!r}; {did_you_mean(name, allowed)}a variant's finetune takes "
                                 f"the keys of train.finetune but {', '.join(VARIANT_FIXED)}")
        try:
            valid = FinetuneConfig.model_validate(v)
        except ValidationError as err:
            e = err.errors()[0]
            raise ValueError(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}") from None
        return {k: getattr(valid, k) for k in v}  # as validated ('1e-4' -> 0.0001)

    @model_validator(mode="after")
    def _changes_something(self) -> Variant:
        if self.seed is None and not self.finetune:
            raise ValueError("a variant needs a seed or finetune keys to change; without either it is a "
                             f"copy of its strategy {self.strategy!r}")
        return self

    def settings(self, base: FinetuneConfig) -> FinetuneConfig:
        """The fine-tuning settings this variant trains with: ``base`` with ``finetune`` on top."""
        return FinetuneConfig.model_validate({**base.model_dump(), **self.finetune})

    def seed_shift(self, run_seed: int) -> int:
        """What the variant adds to the seed each of its fits would get in a run seeded
        ``run_seed`` (its folds then train with ``seed + k``, the refit with ``seed``)."""
        return 0 if self.seed is None else self.seed - run_seed


class AdaptConfig(Section):
    """How each backbone is adapted; every strategy is one more candidate."""

    strategies: list[Strategy] = Field(default_factory=lambda: ["linear_probe"], min_length=1)
    #: Image runs: add the no-transfer baseline ``pixels`` (logistic regression on raw pixels) as a
    #: candidate when no backbone lists it, so the report says when transfer loses to it.
    baseline: bool = True
    #: Each fine-tuning candidate NAME also offers ``bag/NAME``: its k fold models, probabilities
    #: averaged (no training; k test-set passes and k copies of the weights on disk). Its CV is
    #: NAME's own; under a time limit it ships when NAME's refit does not fit. ``null`` (default):
    #: on under ``budget.time_limit`` only (without a limit the refit always runs and wins the tie).
    bag: bool | None = None
    #: ``multilayer_probe``: how many of the backbone's last stages it pools besides its final
    #: features (timm image backbones; see docs/decisions.md).
    taps: int = Field(3, ge=1)
    #: ``multilayer_probe``: more input sizes, as multiples of the run's image size; its view also
    #: embeds each image resized to each and concatenates the features (backbone option ``scales``).
    #: Image presets set ``[0.57, 1.43]`` (128 and 320 px beside 224; docs/decisions.md).
    scales: list[float] = Field(default_factory=list)
    #: More fine-tuning candidates of every backbone, ``NAME: {strategy, seed, finetune}`` (a
    #: :class:`Variant`): candidate ``BACKBONE/NAME``, after the strategies. Seeds or settings that
    #: differ give a backbone's soups more ingredients (docs/decisions.md).
    variants: dict[str, Variant] = Field(default_factory=dict)

    @field_validator("scales")
    @classmethod
    def _check_scales(cls, v: list[float]) -> list[float]:
        if any(not 0.15 <= f <= 4 or f == 1 for f in v) or len(set(v)) < len(v):
            raise ValueError(f"scales {v}: give distinct multiples of the image size from 0.15 to 4, other "
                             "than 1, e.g. [0.57, 1.43]")
        return v

    @field_validator("variants")
    @classmethod
    def _check_variant_names(cls, v: dict[str, Variant]) -> dict[str, Variant]:
        folded = [n.lower() for n in v]
        for name in v:
            if folded.count(name.lower()) > 1:
                raise ValueError(f"variant names {sorted(n for n in v if n.lower() == name.lower())} differ only "
                                 "in case: their folders would collide where file names ignore it")
            if name.lower() in STRATEGIES:
                raise ValueError(f"variant name {name!r} is a strategy's name; name it e.g. {name + '_seed1'!r}")
            if not _VARIANT_NAME.match(name):
                raise ValueError(f"variant name {name!r} must be letters, digits, '_' and '-' "
                                 "(starting with a letter or digit), e.g. 'finetune_seed1'")
        return v


class HeadFit(Section):
    """What every head fitted on cached features shares (a probe head, a feature-fusion head)."""

    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-3, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weight: ClassWeight = "none"
    max_iter: int = Field(200, ge=1)
    lr: float = Field(1e-2, gt=0.0)
    optimizer: Optimizer = "auto"
    tol: float = Field(1e-7, gt=0.0)
    seed: int = 0


class HeadConfig(HeadFit):
    """Hyper-parameters of a :class:`~transfuse.train.heads.HeadClassifier` (``train.head``)."""

    kind: HeadKind = "linear"
    standardize: bool = True


class FinetuneConfig(Section):
    """Settings of one fine-tuning fit (``train.finetune``)."""

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
    class_weight: ClassWeight | tuple[float, ...] = "none"
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the head")
    patience: int | None = Field(3, ge=1, description="early-stopping patience in epochs; None = off")
    inner_val: float = Field(0.2, ge=0, lt=1, description="fraction of each CV fold's training rows held out to "
                             "choose the epoch (early stopping, checkpoint); 0 = train exactly `epochs`")
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    image_size: int | None = Field(None, ge=16, le=1024, description="image backbones that follow "
                                   "preprocess.image_size are fine-tuned (and their fine-tunes predict) at this "
                                   "size (px); null: the run's. The probes keep the run's size")
    probe_weight_decay: float | None = Field(0.1, ge=0, description="weight decay of the probe head that LP-FT "
                                             "(and partial_ft with init: probe) starts from; null: "
                                             "train.head.weight_decay. A weak one fits its rows and leaves the "
                                             "fine-tune no gradient (docs/decisions.md)")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    freeze_bn: bool = Field(True, description="keep BatchNorm in eval mode (running statistics fixed); "
                            "see docs/decisions.md")
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


class PartialConfig(Section):
    """Cached partial fine-tuning (strategy ``partial_ft``): the bottom of the backbone is frozen and
    run once per item; only the top ``blocks`` and the head train, on the cached activations, with
    the ``finetune`` settings (epochs, lr, inner validation split, ...)."""

    blocks: int = Field(2, ge=1, description="top transformer layers (text) or stages (timm EfficientNet/"
                        "MobileNet) that train; the rest is frozen and cached")
    init: Literal["probe", "fresh"] = Field("probe", description="start the head from a linear probe on "
                                            "the same rows (LP-FT) or from a fresh head")
    views: int = Field(0, ge=0, le=16, description="images: augmented views (``augment.image``) cached per "
                       "training item beside the plain one; each epoch trains on one view per item, "
                       "evaluation on the plain one (0: the plain view only)")


class TrainConfig(Section):
    """The ``train`` section: the probe head, fine-tuning and the embedding batch size."""

    head: HeadConfig = HeadConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    partial: PartialConfig = PartialConfig()
    embed_batch_size: int = Field(64, ge=1)
