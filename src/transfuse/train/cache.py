"""Content-addressed feature cache: features are computed once per (weights, preprocessing, item).

Layout: ``<root>/<backbone.cache_key()>/meta.json`` plus shards ``shard-*.npz`` holding
``hashes`` (item content hashes) and ``features``. A lookup embeds only the items no shard holds,
so a rerun, a new split or a superset of the data reuses everything already computed.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transfuse import budget
from transfuse.backbones.base import Backbone
from transfuse.data.base import Dataset
from transfuse.faults import fault_point
from transfuse.io import atomic_save_npz, atomic_write_json
from transfuse.paths import feature_cache_dir


@dataclass
class EmbedStats:
    """What one :meth:`FeatureCache.embed` call did."""

    n_items: int = 0
    n_computed: int = 0
    seconds: float = 0.0


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class FeatureCache:
    """Features on disk, addressed by backbone cache key and item content hash."""

    def __init__(self, root: str | Path | None = None, read_only: bool = False):
        self.root = Path(root) if root is not None else feature_cache_dir()
        #: read what is cached, keep what is computed in memory (a follower rank of a distributed
        #: run: rank 0 writes the cache)
        self.read_only = read_only
        self.last = EmbedStats()
        #: Features computed while the disk could not take them (read-only or full): kept here
        #: for the rest of the run, so they are computed once.
        self._memory: dict[Path, dict[str, np.ndarray]] = {}
        self._warned = False

    def folder(self, backbone: Backbone) -> Path:
        return self.root / backbone.cache_key()

    def _warn(self, what: str, e: Exception) -> None:
        """One warning per cache: the run goes on, computing what it cannot read or keep."""
        if not self._warned:
            from transfuse.progress import console

            why = getattr(e, "strerror", None) or " ".join(str(e).split())[:120] or type(e).__name__
            console.print(f"[yellow]warning:[/yellow] feature cache {self.root}: cannot {what} ({why}); "
                          "computing features in memory for this run (set TRANSFUSE_FEATURE_CACHE to a "
                          "writable folder to keep them)", highlight=False, soft_wrap=True)
            self._warned = True

    def _read(self, folder: Path) -> dict[str, np.ndarray]:
        table: dict[str, np.ndarray] = {}
        try:
            shards = sorted(folder.glob("shard-*.npz")) if folder.exists() else []
        except OSError as e:
            self._warn("read it", e)
            shards = []
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as z:
                    for h, f in zip(z["hashes"].tolist(), z["features"]):
                        table[h] = f
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # unreadable or damaged
                self._warn(f"read {shard.name}", e)
        table.update(self._memory.get(folder, {}))
        return table

    def _cached_hashes(self, folder: Path) -> set[str]:
        """The item hashes the cache holds for ``folder`` (its features are not read)."""
        have: set[str] = set(self._memory.get(folder, {}))
        try:
            shards = sorted(folder.glob("shard-*.npz")) if folder.exists() else []
        except OSError as e:
            self._warn("read it", e)
            return have
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as z:
                    have.update(z["hashes"].tolist())
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # unreadable or damaged
                self._warn(f"read {shard.name}", e)
        return have

    def _write(self, folder: Path, backbone: Backbone, new_hashes: list[str], feats: np.ndarray) -> None:
        """Add a shard; a read-only cache or a read-only or full disk keeps the features in memory instead."""
        if self.read_only:
            self._memory.setdefault(folder, {}).update(zip(new_hashes, feats.astype(np.float32)))
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            meta = folder / "meta.json"
            if not meta.exists():
                atomic_write_json(meta, {"spec": backbone.spec, "feature_dim": backbone.feature_dim,
                                         "weights_hash": backbone.weights_hash(),
                                         "preprocess": backbone.preprocess_config()})
            name = hashlib.sha256("".join(new_hashes).encode()).hexdigest()[:16]
            atomic_save_npz(folder / f"shard-{name}.npz", hashes=np.array(new_hashes),
                            features=feats.astype(np.float32))
        except OSError as e:  # EROFS, EACCES, ENOSPC, EDQUOT, ...
            self._warn("write to it", e)
            self._memory.setdefault(folder, {}).update(zip(new_hashes, feats.astype(np.float32)))

    def missing(self, backbone: Backbone, dataset: Dataset) -> int:
        """How many distinct items of ``dataset`` the cache lacks for ``backbone``."""
        table = self._read(self.folder(backbone))
        return len({h for h in dataset.item_hashes() if h not in table})

    def embed(self, backbone: Backbone, dataset: Dataset, batch_size: int = 64,
              progress: bool = False) -> np.ndarray:
        """Features of every item of ``dataset``, shape ``(len(dataset), feature_dim)``."""
        t0 = time.perf_counter()
        folder = self.folder(backbone)
        hashes = dataset.item_hashes()
        table = self._read(folder)
        missing = sorted({i for i, h in enumerate(hashes) if h not in table},
                         key=lambda i: i)
        # one computation per distinct content
        first_of: dict[str, int] = {}
        for i in missing:
            first_of.setdefault(hashes[i], i)
        todo = list(first_of.values())
        if todo:
            fault_point("embed")
            try:
                feats = compute_features(backbone, dataset.subset(todo), batch_size, progress,
                                         desc=f"embed {backbone.spec or type(backbone).__name__}")
            except budget.TimeLimitReached as e:  # keep what was computed: a rerun starts from there
                if len(e.partial):
                    self._write(folder, backbone, [hashes[i] for i in todo[:len(e.partial)]], e.partial)
                raise
            new_hashes = [hashes[i] for i in todo]
            self._write(folder, backbone, new_hashes, feats)
            table.update(zip(new_hashes, feats))
        out = np.stack([table[h] for h in hashes]).astype(np.float32) if hashes else \
            np.zeros((0, backbone.feature_dim), np.float32)
        self.last = EmbedStats(len(hashes), len(todo), time.perf_counter() - t0)
        return out

    def put(self, backbone: Backbone, dataset: Dataset, feats: np.ndarray) -> None:
        """Store ``feats`` (one row per item of ``dataset``, computed by the caller: e.g. the plain
        columns of a tapped view's features) as ``backbone``'s, for the items the cache lacks."""
        folder = self.folder(backbone)
        have = self._cached_hashes(folder)
        first_of: dict[str, int] = {}
        for i, h in enumerate(dataset.item_hashes()):
            if h not in have:
                first_of.setdefault(h, i)
        if first_of:
            self._write(folder, backbone, list(first_of), np.asarray(feats)[list(first_of.values())])

    def fill(self, backbone: Backbone, dataset: Dataset, batch_size: int = 64, block_batches: int = 64,
             progress: bool = False) -> EmbedStats:
        """Compute and store the features of the items of ``dataset`` the cache lacks, returning
        nothing: for ``transfuse embed``, on any amount of data. Cached features are not loaded;
        the missing items go in blocks of ``block_batches`` batches, each block's file written as
        soon as it is computed (memory holds one block; a killed fill loses at most one). The
        batches are those of :meth:`embed` over the same items."""
        t0 = time.perf_counter()
        folder = self.folder(backbone)
        hashes = dataset.item_hashes()
        have = self._cached_hashes(folder)
        first_of: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h not in have:
                first_of.setdefault(h, i)
        todo = list(first_of.values())
        step = batch_size * block_batches
        for k in range(0, len(todo), step):
            rows = todo[k:k + step]
            fault_point("embed")
            feats = compute_features(backbone, dataset.subset(rows), batch_size, progress,
                                     desc=f"embed {backbone.spec or type(backbone).__name__} "
                                          f"({k + len(rows)}/{len(todo)})")
            self._write(folder, backbone, [hashes[i] for i in rows], feats)
        self.last = EmbedStats(len(hashes), len(todo), time.perf_counter() - t0)
        return self.last

    def size_bytes(self) -> int:
        from transfuse.paths import dir_size

        return dir_size(self.root)

    def entries(self) -> list[dict]:
        """One dict per cached backbone (its meta plus the number of cached items)."""
        out = []
        for meta in sorted(self.root.glob("*/meta.json")):
            info = json.loads(meta.read_text())
            n = 0
            for shard in meta.parent.glob("shard-*.npz"):
                with np.load(shard, allow_pickle=False) as z:
                    n += len(z["hashes"])
            out.append({"key": meta.parent.name, "spec": info.get("spec"), "items": n})
        return out


@torch.no_grad()
def compute_features(backbone: Backbone, dataset: Dataset, batch_size: int = 64,
                     progress: bool = False, desc: str = "embed") -> np.ndarray:
    """Run the frozen backbone over ``dataset`` in eval mode (no cache)."""
    from transfuse.progress import track
    from transfuse.train.loaders import make_loader

    device = pick_device()
    backbone.eval().to(device)
    if budget.active_budget() is not None:  # a time limit: small batches, so a check is never far off
        batch_size = min(batch_size, 16)
    loader = make_loader(dataset, backbone, train=False, batch_size=batch_size)
    chunks = []
    n, first, since = 0, 0, time.time()
    for batch, _ in track(loader, total=len(loader), description=desc, enabled=progress):
        chunks.append(backbone(backbone.batch_to(batch, device)).float().cpu().numpy())
        n += len(chunks[-1])
        if len(chunks) == 1:  # the pace is measured from the second batch on (the first warms up)
            first, since = n, time.time()
        # under a time limit: stop as soon as the measured pace says it cannot finish in time; the
        # features of the first items (in order) go with the exception, for the cache to keep
        try:
            budget.check_projection(desc, n - first, len(dataset) - first, since)
        except budget.TimeLimitReached as e:
            e.partial = np.concatenate(chunks)
            raise
    return np.concatenate(chunks) if chunks else np.zeros((0, backbone.feature_dim), np.float32)
