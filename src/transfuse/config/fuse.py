"""The ``fuse`` section: which fusions a run tries over its candidates."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from transfuse.config.base import Section
from transfuse.config.train import HeadFit, HeadKind

EnsembleName = Literal["mean", "weighted", "greedy", "stacking"]
PositiveFloat = Annotated[float, Field(gt=0.0)]
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]


class UnlabelledSource(Section):
    """Extra unlabelled inputs for distillation: any data source (its labels are never read)."""

    source: str
    path: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class FeatureFusionConfig(HeadFit):
    """Hyper-parameters of a :class:`~transfuse.fuse.features.FeatureFusionClassifier`: the head
    over the concatenated cached features of several backbones."""

    proj_dim: int | None = Field(None, ge=1, description="per-backbone projection width; null = none")
    gate: bool = Field(False, description="learned per-example softmax gate over backbones")
    head: HeadKind = "linear"
    max_iter: int = Field(300, ge=1)


class FeatureFusionOptions(FeatureFusionConfig):
    """The ``fuse.features`` section: a :class:`FeatureFusionConfig` that can be switched off
    (a run seeds the head with the experiment's ``seed``)."""

    enabled: bool = True


class DistillOptions(Section):
    """Distil a fusion into one backbone (``fuse.distill``; off by default).

    The teacher (the best fusion by CV, or the feature fusion) labels the training rows
    (cross-fitted) and a transfer set: ``transfer_views`` augmented copies of each training image
    and up to ``max_unlabelled`` inputs from ``unlabelled`` (a data source; rows also in the run's
    train or test set are dropped). ``mode: probe`` trains a linear head on the student's cached
    features against the teacher's soft labels; ``finetune`` the whole student (costly on a CPU).
    A list of temperatures/alphas/weight decays is searched by the student's nested CV."""

    enabled: bool = False
    student: str | None = Field(None, description="backbone name; null = the best single candidate's by CV")
    teacher: Literal["chosen", "features"] = Field(
        "chosen", description="chosen: the best fusion by CV; features: the feature fusion")
    mode: Literal["probe", "finetune"] = "probe"
    temperature: PositiveFloat | list[PositiveFloat] = 2.0
    alpha: UnitFloat | list[UnitFloat] = Field(0.3, description="weight of the hard-label loss (1 = no teacher)")
    weight_decay: NonNegFloat | list[NonNegFloat] | None = Field(
        None, description="L2 of the student's head; null = train.head.weight_decay")
    transfer_views: int = Field(0, ge=0, description="augmented views per training image (image inputs)")
    unlabelled: UnlabelledSource | None = None
    max_unlabelled: int | None = Field(5000, ge=1, description="seeded sample of the unlabelled inputs")
    epochs: int = Field(3, ge=1, description="finetune mode only")
    lr: float = Field(1e-4, gt=0.0, description="finetune mode only")
    batch_size: int = Field(32, ge=1, description="finetune mode only")


class JointOptions(Section):
    """Joint fine-tuning of all backbones under one late-fusion MLP (``fuse.joint``; off by default:
    it fine-tunes every backbone once per fold)."""

    enabled: bool = False
    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-4, gt=0.0, description="backbone learning rate")
    head_lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(32, ge=1)
    max_train_batches: int | None = Field(None, ge=1, description="cap per epoch (smoke runs)")


SoupMethod = Literal["uniform", "greedy"]


class SoupOptions(Section):
    """Model soups (``fuse.soups``): the weights of one backbone's fine-tuned candidates
    (``finetune``, ``lp_ft``) averaged into one network of that backbone's inference cost. Made
    only where a backbone has at least 2 fine-tuned candidates; ``uniform``: the mean of all,
    ``greedy``: ingredients added best-first while the inner validation score does not drop
    (needs ``train.finetune.inner_val`` > 0). See docs/fusion.md."""

    enabled: bool = Field(True, description="soups where a backbone has >= 2 fine-tuned candidates")
    methods: list[SoupMethod] = Field(default_factory=lambda: ["uniform", "greedy"],
                                      description="uniform: mean of all; greedy: kept best-first by inner validation")


class FuseConfig(Section):
    """Which fusions a run tries over its candidates; each is one more candidate, chosen by CV."""

    enabled: bool = True
    ensembles: list[EnsembleName] = Field(default_factory=lambda: ["mean", "weighted", "greedy", "stacking"])
    features: FeatureFusionOptions = FeatureFusionOptions()
    distill: DistillOptions = DistillOptions()
    joint: JointOptions = JointOptions()
    soups: SoupOptions = SoupOptions()
    max_members: int | None = Field(
        None, ge=2, description="fuse only the best N single candidates by CV; null = all")
