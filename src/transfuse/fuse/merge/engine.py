"""The streaming merge engine: one parameter name at a time from every input, straight to the shards.

For each output tensor the engine reads that tensor from every input (only its bytes, see
``stream.Reader``), converts it to float32 (float64 stays float64) on the chosen device, runs the
method, casts to the output dtype and writes it at its place in the output shard, whose header is
laid out up front. Elementwise work (methods registered ``elementwise=True``, BatchNorm statistics, copies) runs in
blocks of ``chunk_elems`` elements, bit-identical to whole tensors, so peak memory is a few blocks
plus a bounded read-ahead whatever the tensor or model size; other methods get one whole tensor at
a time. Reading, computing and writing overlap (``stream.Pipeline``). Everything is written to a
hidden folder next to ``out_dir`` and renamed into place at the end: a failure leaves no partial
output.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.fuse.merge.config import MergeConfig, load_config, resolve_setting
from transfuse.fuse.merge.method import MergeMethod, TensorContext
from transfuse.fuse.merge.methods import get_method
from transfuse.fuse.merge.slices import LAYER_KEYS, n_layers, plan_slices
from transfuse.fuse.merge.sources import (
    COPY_FILES,
    INDEX_NAME,
    Checkpoint,
    open_checkpoint,
    open_tensor_file,
)
from transfuse.fuse.merge.stream import Pipeline, Reader, shard_layout
from transfuse.fuse.merge.tensor_io import (
    OutEntry,
    TensorEntry,
    plan_shards,
    read_header,
    read_tensor,
)
from transfuse.fuse.merge.tune import greedy_soup
from transfuse.io import atomic_write_json

HEAD_PREFIX = "heads"
_OUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
               "float64": torch.float64}
Evaluate = Callable[[Any], float]
BnStats = Literal["average", "method"]
#: BatchNorm running statistics: averaged uniformly by default (``bn_stats``), never task-merged.
BN_STATS = (".running_mean", ".running_var")
#: Methods whose output element depends only on the same element of the inputs: computed in blocks
#: of ``chunk_elems`` (bit-identical to whole tensors). Others get whole tensors: TIES, DARE and
#: breadcrumbs (per-tensor top-k / random masks and norms), SLERP (norms), Model Stock (cosines),
#: RegMean (matrix solve), Fisher (its extra tensors are read whole).
CPU_CHUNK = 1 << 18
CUDA_CHUNK = 1 << 22
PREFETCH_BYTES = 16 << 20


@dataclass
class MergeResult:
    """What a merge wrote and what it cost."""

    out_dir: Path
    method: str
    tensors: int
    merged: int
    copied: int
    heads: dict[str, list[str]]
    shards: list[str]
    bytes_read: int
    bytes_written: int
    seconds: float
    device: str
    notes: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    """One output tensor: how to make it."""

    out: str
    kind: str  # "merge" | "average" (uniform, BatchNorm statistics) | "copy"
    name: str  # input tensor name
    sources: tuple[int, ...]  # checkpoint indices (merge: the method's inputs; copy: one)
    base: int | None
    dtype: torch.dtype
    shape: tuple[int, ...]
    slice: int | None = None  # passthrough slices: the slice whose parameters apply


class _Inputs:
    """The merge's checkpoints: index 0 is the base when there is one, then the merged models."""

    def __init__(self, cfg: MergeConfig, method: MergeMethod):
        self.cfg, self.method = cfg, method
        uses_base = method.base != "none"
        if method.base == "required" and cfg.base_model is None:
            raise UserError(f"merge method {method.name!r} needs base_model: (the pretrained model)")
        specs = [m for m in cfg.models if not (uses_base and m.model == cfg.base_model)]
        lo, hi = method.min_models, method.max_models
        if not cfg.slices and (len(specs) < lo or (hi is not None and len(specs) > hi)):
            want = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise UserError(f"merge method {method.name!r} takes {want} model(s) besides the base "
                            f"model, got {len(specs)}; fix models:")
        self.specs = specs
        self.base: Checkpoint | None = (
            open_checkpoint(cfg.base_model, cfg.root) if uses_base and cfg.base_model else None)
        self.models = [open_checkpoint(m.model, cfg.root) for m in specs]
        self.names = [m.name for m in specs]
        self.extras = {key: [open_tensor_file(m.files[key], cfg.root) if key in m.files else {}
                             for m in specs] for key in method.extras}

    @property
    def reference(self) -> Checkpoint:
        return self.base or self.models[0]

    def entry(self, ckpt: Checkpoint, name: str) -> TensorEntry | None:
        e = ckpt.tensors.get(name)
        if e is None and name in self.cfg.tied:
            e = ckpt.tensors.get(self.cfg.tied[name])
        return e


def _is_head(cfg: MergeConfig, name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in cfg.heads if p != "auto")


def _out_dtype(cfg: MergeConfig, e: TensorEntry) -> torch.dtype:
    if not e.is_float:
        return e.torch_dtype
    key = cfg.out_dtype or cfg.dtype
    return _OUT_DTYPES[key] if key else e.torch_dtype


def _is_bn_stat(name: str) -> bool:
    return name.endswith(BN_STATS)


def _plan_slices(inp: _Inputs) -> list[_Job]:
    """passthrough with ``slices:``: layer ranges of the models, renumbered (see ``slices``)."""
    jobs = []
    for t in plan_slices(inp.cfg, [list(m.tensors) for m in inp.models]):
        e = inp.models[t.model].tensors[t.name]
        kind = "merge" if e.is_float else "copy"
        jobs.append(_Job(t.out, kind, t.name, (t.model,), None, _out_dtype(inp.cfg, e), e.shape,
                         t.slice))
    return jobs


def _plan(inp: _Inputs, bn_stats: BnStats = "average") -> tuple[list[_Job], dict[str, list[str]]]:
    """Decide every output tensor; all inconsistencies are reported together."""
    if inp.cfg.slices:
        return _plan_slices(inp), {}
    cfg, ref = inp.cfg, inp.reference
    ckpts = ([inp.base] if inp.base else []) + inp.models
    labels = (["base_model"] if inp.base else []) + inp.names
    names = sorted(ref.tensors, key=lambda n: (str(ref.tensors[n].file), ref.tensors[n].start))
    seen = set(names)
    for c in ckpts:
        names += [n for n in c.tensors if n not in seen and not seen.add(n)]  # type: ignore[func-returns-value]
    offset = 1 if inp.base else 0
    jobs: list[_Job] = []
    heads: dict[str, list[str]] = {}
    missing, mismatched = [], []
    auto = "auto" in cfg.heads
    for name in names:
        entries = [inp.entry(c, name) for c in ckpts]
        present = [e for e in entries if e is not None]
        shapes = {e.shape for e in present}
        if _is_head(cfg, name) or (auto and (len(present) < len(ckpts) or len(shapes) > 1)):
            for j, e in enumerate(entries[offset:]):
                if e is not None:
                    out = f"{HEAD_PREFIX}.{inp.names[j]}.{name}"
                    jobs.append(_Job(out, "copy", name, (offset + j,), None, _out_dtype(cfg, e), e.shape))
                    heads.setdefault(inp.names[j], []).append(name)
            continue
        if len(present) < len(ckpts):
            lacking = [lab for lab, e in zip(labels, entries) if e is None]
            missing.append(f"{name} (missing in {', '.join(lacking)})")
            continue
        if len(shapes) > 1:
            mismatched.append(f"{name} {' vs '.join(str(list(e.shape)) for e in present)}")
            continue
        first = entries[0]
        if not all(e.is_float for e in present):
            jobs.append(_Job(name, "copy", name, (0,), None, first.torch_dtype, first.shape))
            continue
        sources = tuple(range(offset, len(ckpts)))
        if bn_stats == "average" and _is_bn_stat(name):
            jobs.append(_Job(name, "average", name, sources, None, _out_dtype(cfg, first), first.shape))
            continue
        jobs.append(_Job(name, "merge", name, sources, 0 if inp.base else None,
                         _out_dtype(cfg, first), first.shape))
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing: {'; '.join(missing[:20])}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched[:20])}")
        more = " (first 20 of each shown)" if max(len(missing), len(mismatched)) > 20 else ""
        raise UserError(f"the models do not match: {' | '.join(parts)}{more}; merge models of one "
                        "architecture, or keep differing task heads per model with heads: auto "
                        "(or heads: [PREFIX, ...])")
    return jobs, heads


def _compute_dtype(x: Tensor, device: torch.device, label: str, entry: TensorEntry) -> Tensor:
    """``x`` in float32 (float64 stays) on ``device``; NaN/inf is a UserError naming the tensor."""
    x = x.to(device=device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    # a sum is finite iff every entry is, unless it overflows (then check entry by entry): one
    # fast reduction instead of an elementwise isfinite pass over every input
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise UserError(f"{entry.file}: tensor {label} contains NaN or inf; "
                        "fix or drop this checkpoint")
    return x


def _chunked(inp: _Inputs, job: _Job) -> bool:
    """Whether ``job`` may be computed block by block (elementwise work only)."""
    if job.kind in ("copy", "average"):
        return True
    return inp.method.elementwise and not inp.method.extras


def _units(inp: _Inputs, jobs: list[_Job], chunk: int) -> list[tuple[int, int, int | None]]:
    """(job index, first element, element count or None for the whole tensor), in write order."""
    units: list[tuple[int, int, int | None]] = []
    for i, job in enumerate(jobs):
        numel = math.prod(job.shape)
        if _chunked(inp, job) and numel > chunk:
            units += [(i, lo, min(chunk, numel - lo)) for lo in range(0, numel, chunk)]
        else:
            units.append((i, 0, None))
    return units


def _run_jobs(inp: _Inputs, jobs: list[_Job], where: dict[str, tuple[int, int]], reader: Reader,
              device: torch.device, chunk_elems: int | None) -> dict[str, int]:
    """Read, compute and write every job's tensor, block by block where the work is elementwise."""
    cfg, method = inp.cfg, inp.method
    ckpts = ([inp.base] if inp.base else []) + inp.models
    labels = (["base_model"] if inp.base else []) + inp.names
    chunk = chunk_elems or (CUDA_CHUNK if device.type == "cuda" else CPU_CHUNK)
    entries = [[inp.entry(c, j.name) for c in ckpts] for j in jobs]
    stats = {"read": 0, "merged": 0, "copied": 0}

    def load(unit: tuple[int, int, int | None]) -> tuple[list[Tensor], int]:
        i, first, count = unit
        job = jobs[i]
        wanted = ([job.base] if job.base is not None else []) + list(job.sources)
        parts = [reader.read(entries[i][k], first, count) for k in wanted]  # type: ignore[arg-type]
        return parts, sum(p.nbytes for p in parts)

    linear = get_method("linear")
    params: dict[str, Any] = {}
    with Pipeline(_units(inp, jobs, chunk), load, PREFETCH_BYTES) as pipe:
        for (i, first, count), parts in pipe:
            job = jobs[i]
            stats["read"] += sum(p.nbytes for p in parts)
            fd, offset = where[job.out]
            if job.kind == "copy":
                x = parts[0].to(job.dtype)
            else:
                names = ([job.base] if job.base is not None else []) + list(job.sources)
                whole = count is None
                xs = [_compute_dtype(p.view(job.shape) if whole else p, device,
                                     f"{job.name!r} of {labels[k]}", entries[i][k])  # type: ignore[arg-type]
                      for p, k in zip(parts, names)]
                del parts
                base = xs.pop(0) if job.base is not None else None
                if first == 0:
                    params = _params_for(cfg, inp, job) if job.kind == "merge" else {}
                if job.kind == "average":
                    x = linear(xs, None, weight=[1.0] * len(xs), normalize=True)
                else:
                    extras = {key: _extra(inp, key, job.name, device) for key in method.extras}
                    ctx = TensorContext(job.name, tuple(inp.names), cfg.seed)
                    x = method(xs, base, ctx=ctx, extras=extras, **params)
                del xs, base
                x = x.to(job.dtype)
            if count is None or first + count >= math.prod(job.shape):
                stats["copied" if job.kind == "copy" else "merged"] += 1
            pipe.write(fd, offset + first * job.dtype.itemsize, x)
            del x
    return stats


def _params_for(cfg: MergeConfig, inp: _Inputs, job: _Job) -> dict[str, Any]:
    method, name = inp.method, job.name
    out: dict[str, Any] = {}
    if job.slice is not None:  # one source: the slice's parameters (filters see the output name)
        own = cfg.slices[job.slice].parameters
        for key, p in method.per_model.items():
            v = resolve_setting(own.get(key), job.out)
            if v is None:
                v = resolve_setting(cfg.parameters.get(key), job.out)
            out[key] = [p.default if v is None else v]
        return out
    for key in method.global_params:
        if key in cfg.parameters:
            v = resolve_setting(cfg.parameters[key], name)
            if v is not None:
                out[key] = v
    for key, p in method.per_model.items():
        values = []
        for spec in inp.specs:
            v = resolve_setting(spec.parameters.get(key), name)
            if v is None:
                v = resolve_setting(cfg.parameters.get(key), name)
            if v is None:
                if p.required:
                    raise UserError(f"models: {spec.name!r} needs parameter {key!r} "
                                    f"(in its parameters or the top-level parameters)")
                v = p.default
            values.append(v)
        out[key] = values
    return out


def _device(cfg: MergeConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no GPU is visible; use device: auto or cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def merge(
    config: MergeConfig | dict[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    evaluate: Evaluate | None = None,
    overwrite: bool = False,
    bn_stats: BnStats | None = None,
    chunk_elems: int | None = None,
) -> MergeResult:
    """Merge the models of ``config`` (mergekit YAML/dict) into ``out_dir``.

    ``evaluate(state_dict) -> score`` is needed by ``greedy_soup`` only (higher is better).
    ``out_dir`` must be absent or empty unless ``overwrite``. ``bn_stats`` (default: the config's, ``"average"``) ``"average"`` gives
    BatchNorm running means and variances the uniform average of the merged models (``"method"``
    merges them like any weight). ``chunk_elems`` is the block size of elementwise work (elements
    per input; default 256 Ki on CPU, 4 Mi on GPU): it bounds memory, not the result.
    """
    t0 = time.perf_counter()
    cfg = config if isinstance(config, MergeConfig) else load_config(config)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out is an existing file, not a folder; give a new folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: output folder exists and is not empty; pick another --out "
                        "or pass overwrite")
    notes: list[str] = []
    scores: dict[str, float] = {}
    method = cfg.method
    if method.needs_evaluate:
        if evaluate is None:
            raise UserError(f"merge method {method.name!r} needs an evaluate callback "
                            "(a validation score): call transfuse.fuse.merge.greedy_soup from Python")
        soup = greedy_soup(cfg, evaluate)
        scores = soup.scores
        notes.append(f"greedy soup kept {', '.join(soup.kept)} of {len(cfg.models)} models "
                     f"(individual scores: {scores}); merge.yaml records the resulting uniform soup")
        cfg = cfg.with_models(soup.kept, method="linear")
        method = cfg.method
    for key in ("int8_mask",):
        if key in cfg.parameters:
            notes.append(f"parameter {key} is accepted for mergekit compatibility and ignored "
                         "(transfuse computes in float32)")
    if cfg.tokenizer_source not in (None, "base"):
        notes.append(f"tokenizer_source {cfg.tokenizer_source!r} is not supported; tokenizer "
                     "files were copied from the base (or first) model")

    inp = _Inputs(cfg, method)
    _check_output(out, _input_paths(config, inp), overwrite)
    jobs, heads = _plan(inp, bn_stats or cfg.bn_stats)  # type: ignore[arg-type]
    device = _device(cfg)
    shards = plan_shards([OutEntry(j.out, j.dtype, j.shape) for j in jobs], cfg.max_shard_size)
    shard_names = _shard_names(len(shards))
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    ckpts = ([inp.base] if inp.base else []) + inp.models
    reader = Reader([f for c in ckpts for f in c.files] if cfg.hash_inputs else ())
    fds: list[int] = []
    try:
        where: dict[str, tuple[int, int]] = {}
        for name, entries in zip(shard_names, shards):
            head, offsets = shard_layout(entries)
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fds.append(fd)
            os.write(fd, head)
            where.update({e.name: (fd, offsets[e.name]) for e in entries})
        threads = torch.get_num_threads()
        if device.type == "cpu":  # blocks are small: intra-op threads only contend with the
            torch.set_num_threads(1)  # pipeline's reader and writer threads (restored below)
        try:
            stats = _run_jobs(inp, jobs, where, reader, device, chunk_elems)
        finally:
            torch.set_num_threads(threads)
        for fd in fds:
            os.close(fd)
        fds.clear()
        bytes_written = sum((tmp / name).stat().st_size for name in shard_names)
        _write_side_files(tmp, cfg, inp, jobs, shard_names, heads)
        result = MergeResult(out, method.name, len(jobs), stats["merged"], stats["copied"], heads,
                             shard_names, stats["read"], bytes_written, 0.0, str(device), notes,
                             scores)
        hashes = [{f.name: reader.sha256(f) for f in c.files} if cfg.hash_inputs else {}
                  for c in ckpts]
        _write_card(tmp, cfg, method, inp, result, hashes)
        atomic_write_json(tmp / OUTPUT_MARKER, {"written_by": "transfuse merge", "files": sorted(
            p.name for p in tmp.iterdir())})
        if out.exists():
            _check_output(out, _input_paths(config, inp), overwrite)  # still only ours
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for fd in fds:
            os.close(fd)
        reader.close()
    result.seconds = time.perf_counter() - t0
    return result


#: Written last into every merge output: the files the merge wrote (what --overwrite may remove).
OUTPUT_MARKER = ".transfuse-merge.json"


def _input_paths(config: Any, inp: _Inputs) -> list[Path]:
    """Every file and folder the merge reads: the config file, the models, their auxiliary files."""
    paths = [Path(config)] if isinstance(config, (str, Path)) else []
    for c in ([inp.base] if inp.base else []) + inp.models:
        paths += [c.path, *c.files] + ([c.folder] if c.folder else [])
    for per_model in inp.extras.values():
        paths += [e.file for index in per_model for e in index.values()]
    return paths


def _ours(out: Path) -> set[str]:
    """The names in ``out`` a previous merge wrote: those its marker lists, or (an output written
    before the marker existed, recognised by its merge.yaml) the names a merge writes."""
    try:
        listed = json.loads((out / OUTPUT_MARKER).read_text())["files"]
        return {str(n) for n in listed} | {OUTPUT_MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not (out / "merge.yaml").is_file():
        return set()
    return {p.name for p in out.iterdir() if p.name in {"merge.yaml", "heads.json", "README.md",
                                                         INDEX_NAME, *COPY_FILES}
            or (p.name.startswith("model") and p.name.endswith(".safetensors"))}


def _check_output(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse an output folder that is, or holds, a merge input (--overwrite would delete it), and
    an --overwrite of a folder holding anything a previous merge did not write."""
    target = out.resolve()
    for p in inputs:
        q = p.resolve()
        if q == target or target in q.parents:
            raise UserError(f"--out {out} holds the merge input {p}; writing there would replace it: give "
                            "an output folder outside the inputs")
    if overwrite and out.is_dir() and any(out.iterdir()):
        ours = _ours(out)
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if foreign:
            names = ", ".join(map(repr, foreign[:3])) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UserError(f"--out {out} holds {names}, which transfuse merge did not write; --overwrite "
                            "only replaces a previous merge's output: move them or give another folder")


def _extra(inp: _Inputs, key: str, name: str, device: torch.device) -> list[Tensor] | None:
    """Per-model auxiliary tensors for ``name`` (by tensor name, or module name for ``.weight``)."""
    found = []
    module = name[: -len(".weight")] if name.endswith(".weight") else None
    for index in inp.extras[key]:
        e = index.get(name) or (index.get(module) if module else None)
        if e is None:
            return None
        found.append(read_tensor(e).to(device=device, dtype=torch.float32))
    return found


def _write_card(tmp: Path, cfg: MergeConfig, method: MergeMethod, inp: _Inputs,
                result: MergeResult, hashes: list[dict[str, str]]) -> None:
    """README.md with the inputs' sha256, hashed inline while the merge read them."""
    from transfuse.fuse.merge.card import render_card
    from transfuse.io import atomic_write_text

    roles = (["base model"] if inp.base else []) + [f"model `{n}`" for n in inp.names]
    ckpts = ([inp.base] if inp.base else []) + inp.models
    inputs = [(role, c.ref, h) for role, c, h in zip(roles, ckpts, hashes)]
    atomic_write_text(tmp / "README.md", render_card(cfg, method, inputs, result))


def _write_side_files(tmp: Path, cfg: MergeConfig, inp: _Inputs, jobs: list[_Job],
                      shard_names: list[str], heads: dict[str, list[str]]) -> None:
    from transfuse.io import atomic_write_json, atomic_write_text

    if len(shard_names) > 1:
        weight_map: dict[str, str] = {}
        total = 0
        for name in shard_names:
            entries, _ = read_header(tmp / name)
            weight_map.update({k: name for k in entries})
            total += sum(e.nbytes for e in entries.values())
        atomic_write_json(tmp / INDEX_NAME, {"metadata": {"total_size": total},
                                             "weight_map": weight_map})
    atomic_write_text(tmp / "merge.yaml", cfg.to_yaml())
    if heads:
        atomic_write_json(tmp / "heads.json", {name: {p: f"{HEAD_PREFIX}.{name}.{p}" for p in ps}
                                               for name, ps in heads.items()})
    folder = next((c.folder for c in ([inp.base] if inp.base else []) + inp.models if c.folder), None)
    if folder is not None:
        for f in COPY_FILES:
            if (folder / f).is_file():
                shutil.copyfile(folder / f, tmp / f)
    if cfg.slices and (tmp / "config.json").is_file():  # the stacked model's number of layers
        model_cfg = json.loads((tmp / "config.json").read_text())
        key = next((k for k in LAYER_KEYS if k in model_cfg), None)
        if key is not None:
            model_cfg[key] = n_layers(cfg)
            atomic_write_json(tmp / "config.json", model_cfg)


def run_merge_cli(config_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> MergeResult:
    """``transfuse merge CONFIG --out DIR``: merge and print a one-paragraph summary."""
    r = merge(config_path, out_dir, overwrite=overwrite)
    gb = (r.bytes_read + r.bytes_written) / 1e9
    print(f"merged {r.tensors} tensors ({r.merged} merged, {r.copied} copied) with {r.method} "
          f"on {r.device} in {r.seconds:.1f} s ({gb / max(r.seconds, 1e-9):.2f} GB/s read+write) "
          f"-> {r.out_dir} ({len(r.shards)} shard(s))")
    for note in r.notes:
        print(f"note: {note}")
    return r
