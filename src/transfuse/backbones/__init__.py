"""Pretrained backbones behind one interface (see :class:`~transfuse.backbones.base.Backbone`)."""

from transfuse.backbones.base import Backbone
from transfuse.backbones.registry import all_names, create_backbone

__all__ = ["Backbone", "all_names", "create_backbone"]
