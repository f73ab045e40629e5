"""Built-in merge methods: importing this package registers them in ``METHODS``.

Whoever needs the full registry imports :func:`get_method` from here; the method modules import
only ``merge.method`` (the decorator and the registry), so the arrows point one way.
"""

from transfuse.fuse.merge.method import METHODS, MergeMethod
from transfuse.fuse.merge.methods import (  # noqa: F401  (registers the built-ins)
    fisher,
    linear,
    model_stock,
    pairwise,
    passthrough,
    ram,
    regmean,
    sce,
    slerp,
    soup,
    spherical,
    svd,
    task_arithmetic,
    wudi,
)


def get_method(name: str) -> MergeMethod:
    """The registered method ``name`` (built-in or user-registered); a miss raises a UserError
    listing the valid names."""
    return METHODS.get(name)
