"""``transfuse embed CONFIG [--shard I/N]``: fill the feature cache (``TRANSFUSE_FEATURE_CACHE``)
with the features of a config's data, for every backbone of the config, from one process or from
N processes on any machines that share the cache folder. A later ``transfuse run`` (or ``search``)
of the config finds every item in the cache and computes none.

The split is by batch: the distinct items (by content hash; the data, then the external test
data) in their order, cut into batches of ``train.embed_batch_size``; batch ``b`` belongs to shard
``b mod N``. A shard computes exactly the batches one process would compute from an empty cache,
so its cached features are byte-identical to one process's (given the same hardware, libraries
and thread count: a CPU forward pass with another thread count differs in the last bits), and
each item is computed once over all shards. Shards write separate cache files, never the same
one, a file per block of batches as it is computed (:meth:`FeatureCache.fill`): a killed shard,
run again, computes only the blocks it had not written.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from transfuse.errors import UserError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``)."""

    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> Shard:
    """``--shard I/N`` -> :class:`Shard`; None -> the whole data (0/1)."""
    if text is None:
        return Shard()
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if m and int(m[2]) >= 1 and int(m[1]) < int(m[2]):
        return Shard(int(m[1]), int(m[2]))
    n = int(m[2]) if m and int(m[2]) >= 2 else 2
    example = f"--shard 0/{n} and --shard 1/{n}" if n == 2 else f"--shard 0/{n} ... --shard {n - 1}/{n}"
    raise UserError(f"--shard {text!r} is not I/N with 0 <= I < N; run one process per shard I = 0 .. N-1, "
                    f"e.g. {example}")


def shard_rows(hashes: list[str], seen: set[str], batch_size: int, shard: Shard, first_batch: int) -> list[int]:
    """The rows of one dataset that ``shard`` embeds: its first row of each content not in
    ``seen`` (updated), cut into batches numbered from ``first_batch``; batch ``b`` is shard
    ``b mod N``'s. Returns the rows, in order (whole batches, so the cache computes the same
    batches as one process)."""
    new = []
    for i, h in enumerate(hashes):
        if h not in seen:
            seen.add(h)
            new.append(i)
    batches = [new[k:k + batch_size] for k in range(0, len(new), batch_size)]
    return [i for b, rows in enumerate(batches, start=first_batch) if b % shard.count == shard.index for i in rows]


def n_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def embed_config(cfg: Any, shard: Shard = Shard(), progress: bool = False) -> list[dict[str, Any]]:
    """Embed shard ``shard`` of the data of ``cfg`` (an ExperimentConfig) with each of its
    backbones into the feature cache. One dict per backbone: ``backbone``, ``items`` (this
    shard's), ``computed``, ``cached`` (found in the cache already), ``seconds``, ``folder``; or
    ``skipped`` (why) for a backbone without features (a raw estimator)."""
    from transfuse.artifacts.store import check_data_options, load_sources
    from transfuse.backbones.registry import create_backbone, resolve_options
    from transfuse.data.multimodal import dataset_for
    from transfuse.train.cache import FeatureCache

    check_data_options(cfg)
    data, test_data = load_sources(cfg)
    parts = [d for d in (data, test_data) if d is not None]
    cache, bs = FeatureCache(), cfg.train.embed_batch_size
    out = []
    for bcfg in cfg.backbones:
        t0 = time.perf_counter()
        backbone = create_backbone(bcfg.name, **resolve_options(bcfg.options, cfg.data.modality,
                                                                cfg.preprocess.image_size))
        if getattr(backbone, "is_raw_estimator", False):
            out.append({"backbone": bcfg.name, "skipped": "a raw estimator: it has no features to cache"})
            continue
        seen: set[str] = set()
        first_batch, items, computed = 0, 0, 0
        for part in parts:
            view = dataset_for(part, backbone.modality)
            hashes = view.item_hashes()
            before = len(seen)
            rows = shard_rows(hashes, seen, bs, shard, first_batch)
            first_batch += n_batches(len(seen) - before, bs)
            if rows:
                stats = cache.fill(backbone, view.subset(rows), bs, progress=progress)
                items, computed = items + stats.n_items, computed + stats.n_computed
        out.append({"backbone": bcfg.name, "items": items, "computed": computed, "cached": items - computed,
                    "seconds": time.perf_counter() - t0, "folder": str(cache.folder(backbone))})
    return out
