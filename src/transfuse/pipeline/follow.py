"""A follower rank of a distributed run: the same fine-tuning fits as rank 0, nothing written.

Under DDP every process runs the same command (Lightning's launcher re-runs ``sys.argv`` for its
other local ranks; ``torchrun`` and ``srun`` start every rank). Rank 0 runs the whole pipeline and
writes the run folder and the feature cache; a follower (any other rank) only takes part in the
distributed work, the fine-tuning ``Trainer.fit`` calls, and then exits:

- it reads the run's saved split (or makes the same split in memory, ``seed`` decides it), and
  the cached features (or computes them in memory): what it reads is what rank 0 wrote or will
  write, so its fits see the same rows;
- it walks the candidates in rank 0's order and cross-fits only the unfinished fine-tuning ones
  (``finetune``, ``lp_ft``, ``partial_ft``): each of their folds is one ``Trainer.fit`` on every
  rank; probes, baselines, fusions and the report are rank 0's alone (no ``Trainer`` in them);
- every write through :mod:`transfuse.io` raises in this process, and Lightning writes checkpoints
  and logs from rank 0 only. Each fit checks that all ranks are at the same fit with the same
  rows (:func:`transfuse.train.finetune.check_same_fit`).
"""

from __future__ import annotations

from typing import Any

from transfuse.artifacts.store import RunFolder
from transfuse.distributed import become_follower
from transfuse.errors import UserError
from transfuse.io import forbid_writes


def follow_experiment(cfg: Any, run: RunFolder, who: str, wrap: dict[str, Any] | None = None) -> dict[str, Any]:
    """Take part in the fine-tuning fits of ``cfg``'s run in ``run`` as rank ``who`` (e.g.
    ``"rank 1"``); returns ``{"follower": who, "run_dir": ..., "fits": n}``."""
    from transfuse.pipeline.singles import run_singles
    from transfuse.progress import console
    from transfuse.train import finetune
    from transfuse.train.cache import FeatureCache

    if wrap:
        raise UserError(f"{who}: a searched run does not fine-tune under DDP; search with one process per "
                        "worker (docs/distributed.md) or set search.enabled: false")
    forbid_writes(f"{who} of a distributed run")
    become_follower(who)
    quiet = console.quiet
    console.quiet = True  # rank 0 prints the run's progress
    try:
        before = finetune.fits_joined()
        data = run.prepare_data(cfg, write=False)
        run_singles(cfg, run, data, FeatureCache(read_only=True), False, {}, follower=True)
        fits = finetune.fits_joined() - before
    finally:
        console.quiet = quiet
    return {"follower": who, "run_dir": str(run.path), "fits": fits}
