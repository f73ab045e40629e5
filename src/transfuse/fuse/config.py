"""The ``fuse:`` section of an experiment (pydantic only: importing it stays cheap)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EnsembleName = Literal["mean", "weighted", "greedy", "stacking"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureFusionOptions(_Section):
    """The head over the concatenated cached features of the run's backbones (``fuse.features``)."""

    enabled: bool = True
    proj_dim: int | None = Field(None, ge=1, description="per-backbone projection width; null = none")
    gate: bool = Field(False, description="learned per-example softmax gate over backbones")
    head: Literal["linear", "mlp"] = "linear"
    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-3, ge=0.0)
    max_iter: int = Field(300, ge=1)


class DistillOptions(_Section):
    """Distil the best fusion into one backbone (``fuse.distill``; off by default).

    ``mode: probe`` trains a linear head on the student's cached features against the teacher's
    soft labels (seconds); ``finetune`` trains the whole student backbone (costly on a CPU)."""

    enabled: bool = False
    student: str | None = Field(None, description="backbone name; null = the fastest single candidate's")
    mode: Literal["probe", "finetune"] = "probe"
    temperature: float = Field(2.0, gt=0.0)
    alpha: float = Field(0.3, ge=0.0, le=1.0, description="weight of the hard-label loss (1 = no teacher)")
    epochs: int = Field(3, ge=1, description="finetune mode only")
    lr: float = Field(1e-4, gt=0.0, description="finetune mode only")
    batch_size: int = Field(32, ge=1, description="finetune mode only")


class JointOptions(_Section):
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


class FuseConfig(_Section):
    """Which fusions a run tries over its candidates; each is one more candidate, chosen by CV."""

    enabled: bool = True
    ensembles: list[EnsembleName] = Field(default_factory=lambda: ["mean", "weighted", "greedy", "stacking"])
    features: FeatureFusionOptions = FeatureFusionOptions()
    distill: DistillOptions = DistillOptions()
    joint: JointOptions = JointOptions()
    max_members: int | None = Field(
        None, ge=2, description="fuse only the best N single candidates by CV; null = all")
    include_baselines: bool = Field(
        False, description="also fuse raw-estimator baselines (e.g. tfidf); such a fusion has no "
        "saved model, so 'transfuse predict' cannot serve it")
