"""Built-in merge methods; importing this package registers them in ``METHODS``."""

from transfuse.fuse.merge.methods import (  # noqa: F401
    fisher,
    linear,
    model_stock,
    regmean,
    slerp,
    soup,
    task_arithmetic,
)
