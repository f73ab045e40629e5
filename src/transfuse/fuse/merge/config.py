"""The merge config: mergekit's YAML format plus a few transfuse keys, validated before any work.

mergekit keys: ``merge_method``, ``base_model``, ``models[].model``, ``models[].parameters``,
top-level ``parameters`` (global ones, and defaults of per-model ones), ``dtype``, ``out_dtype``,
``tokenizer_source`` (tokenizer files are copied from the base model; other values get a note).
A parameter value is a number/bool/string or a mergekit filter list
(``[{filter: self_attn, value: 0.3}, {value: 0.5}]``: first entry whose filter is a substring of
the tensor name). ``slices`` (layer ranges) works with ``passthrough``, one source per slice.
transfuse keys: ``device``, ``max_shard_size``, ``seed``, ``heads``, ``tied``,
``hash_inputs``, ``models[].name`` and per-model tensor files named by the method (``fisher``, ``gram``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from transfuse.config.problems import short_repr
from transfuse.errors import UserError
from transfuse.fuse.merge.method import MergeMethod
from transfuse.fuse.merge.methods import get_method

MERGEKIT_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype",
                 "out_dtype", "tokenizer_source"}
TRANSFUSE_KEYS = {"device", "max_shard_size", "seed", "heads", "tied", "hash_inputs", "bn_stats"}
UNSUPPORTED = {
    "modules": "modules (per-module slices) are not supported; use slices: for one layer stack",
    "tokenizer": "the tokenizer block is not supported; tokenizer files are copied from the base model",
    "chat_template": "chat_template is not supported; edit tokenizer_config.json after merging",
}
DTYPES = ("float32", "float16", "bfloat16", "float64")
DEVICES = ("auto", "cpu", "cuda")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


@dataclass(frozen=True)
class ModelSpec:
    """One input model: its reference, a short unique name, its parameters and tensor files."""

    model: str
    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSpec:
    """One mergekit output slice: layers ``[start, end)`` of model ``model`` (a ModelSpec name)."""

    model: str
    start: int
    end: int
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the source's, then the slice's


@dataclass(frozen=True)
class MergeConfig:
    """A validated merge config (frozen); ``to_dict`` gives back mergekit's YAML format."""

    merge_method: str
    models: tuple[ModelSpec, ...]
    base_model: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    device: str = "auto"
    max_shard_size: int = 5 * 10**9
    seed: int = 0
    heads: tuple[str, ...] = ()
    tied: Mapping[str, str] = field(default_factory=dict)
    hash_inputs: bool = True
    bn_stats: str = "average"  # BatchNorm running mean/var: "average" (uniform) or "method"
    root: Path | None = None  # folder that relative model paths may be relative to
    slices: tuple[SliceSpec, ...] = ()  # passthrough frankenmerges; models then lists their inputs

    @property
    def method(self) -> MergeMethod:
        return get_method(self.merge_method)

    def with_parameters(self, **params: Any) -> MergeConfig:
        """A copy with top-level parameters overridden (validated like the original)."""
        d = self.to_dict()
        d["parameters"] = {**d.get("parameters", {}), **params}
        return load_config(d, root=self.root)

    def with_models(self, names: list[str], method: str | None = None) -> MergeConfig:
        """A copy keeping only the models called ``names`` (optionally another method)."""
        keep = tuple(m for m in self.models if m.name in names)
        return replace(self, models=keep, merge_method=method or self.merge_method)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            d["base_model"] = self.base_model
        if self.slices:
            paths = {m.name: m.model for m in self.models}
            d["slices"] = [{"sources": [{"model": paths[s.model], "layer_range": [s.start, s.end],
                                         **({"parameters": dict(s.parameters)} if s.parameters else {})}]}
                           for s in self.slices]
        d["models"] = []
        for m in self.models:
            entry: dict[str, Any] = {"model": m.model, "name": m.name}
            if m.parameters:
                entry["parameters"] = dict(m.parameters)
            entry.update(m.files)
            d["models"].append(entry)
        if self.slices:
            del d["models"]
        if self.parameters:
            d["parameters"] = dict(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        defaults = MergeConfig("linear", ())
        for key in ("device", "max_shard_size", "seed", "hash_inputs", "bn_stats"):
            if getattr(self, key) != getattr(defaults, key):
                d[key] = getattr(self, key)
        if self.heads:
            d["heads"] = "auto" if self.heads == ("auto",) else list(self.heads)
        if self.tied:
            d["tied"] = dict(self.tied)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def resolve_setting(value: Any, tensor_name: str) -> Any:
    """A parameter's value for one tensor: a scalar, or the first matching mergekit filter entry."""
    if isinstance(value, list):
        for entry in value:
            f = entry.get("filter")
            if not f or f in tensor_name:
                return entry["value"]
        return None
    return value


def _check_setting(method: MergeMethod, key: str, value: Any, where: str, per_model: bool) -> Any:
    params = method.per_model if per_model else {**method.per_model, **method.global_params}
    if key not in params:
        valid = ", ".join(sorted(params)) or "(none)"
        raise UserError(f"{where}: unknown parameter {key!r} for merge method "
                        f"{method.name!r}; valid parameters: {valid}")
    p = params[key]
    if isinstance(value, list):
        if not all(isinstance(e, Mapping) and set(e) <= {"filter", "value"} and "value" in e
                   for e in value):
            raise UserError(
                f"{where}: parameter {key!r} is a list {short_repr(value)}; transfuse takes a single value "
                "or a filter list ([{filter: NAME_PART, value: V}, {value: DEFAULT}]); mergekit's "
                "layer gradients are not supported")
        return [{**e, "value": p.check(e["value"], where)} for e in value]
    return p.check(value, where)


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if m and m.group(2).lower() in _UNITS and float(m.group(1)) > 0:
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise UserError(f"max_shard_size: got {short_repr(value)}; give bytes or a size like '2GB' or '500MB'")


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> Any:
    if value is not None and value not in valid:
        raise UserError(f"{key}: got {short_repr(value)}; valid values: {', '.join(valid)}")
    return value


def _name_for(ref: str, taken: set[str]) -> str:
    stem = Path(ref.rstrip("/")).name
    stem = stem.removesuffix(".safetensors")
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "model"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def load_config(config: Mapping[str, Any] | str | Path, root: Path | None = None) -> MergeConfig:
    """Parse and validate a config dict or YAML file; every error names the key and the fix."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise UserError(f"merge config {path} not found")
        from transfuse.config.load import MAX_FILE_BYTES, load_yaml

        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(f"merge config {path} is {path.stat().st_size >> 20} MB; a merge config is "
                            "a few KB: give the merge's YAML file")
        try:
            data = load_yaml(path.read_text(encoding="utf-8", errors="replace"), f"merge config {path}")
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        root = path.resolve().parent
    else:
        data = config
    if not isinstance(data, Mapping):
        raise UserError("merge config must be a mapping with merge_method and models")
    data = dict(data)
    for key in data:
        if key in UNSUPPORTED:
            raise UserError(f"merge config key {key!r}: {UNSUPPORTED[key]}")
        if key not in MERGEKIT_KEYS | TRANSFUSE_KEYS:
            raise UserError(f"unknown merge config key {key!r}; valid keys: "
                            f"{', '.join(sorted(MERGEKIT_KEYS | TRANSFUSE_KEYS))}")
    if "merge_method" not in data:
        raise UserError("merge config: 'merge_method' is missing; e.g. merge_method: linear")
    method = get_method(str(data["merge_method"]))
    base = data.get("base_model")
    if isinstance(base, Mapping):
        base = base.get("model")
    if base is not None and not isinstance(base, str):
        raise UserError(f"base_model: expected a path or model id, got {short_repr(base)}")
    raw_slices = data.get("slices")
    if raw_slices is not None:
        raw_models, raw_slices = _slice_models(data, method.name, raw_slices)
    else:
        raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise UserError("merge config: 'models' must be a non-empty list of {model: PATH} entries")
    models, taken = [], set()
    model_keys = {"model", "name", "parameters", *method.extras}
    for i, m in enumerate(raw_models):
        where = f"models[{i}]"
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, Mapping) or not isinstance(m.get("model"), str):
            raise UserError(f"{where}: expected {{model: PATH}}, got {short_repr(m)}")
        for key in m:
            if key not in model_keys:
                raise UserError(f"{where}: unknown key {key!r}; valid keys: "
                                f"{', '.join(sorted(model_keys))}")
        name = m.get("name") or _name_for(m["model"], taken)
        if name in taken:
            raise UserError(f"{where}: name {name!r} is used twice; give each model a unique name")
        taken.add(name)
        params = {k: _check_setting(method, k, v, f"{where}.parameters", per_model=True)
                  for k, v in (m.get("parameters") or {}).items()}
        files = {k: str(m[k]) for k in method.extras if k in m}
        models.append(ModelSpec(m["model"], name, params, files))
    params = {k: _check_setting(method, k, v, "parameters", per_model=False)
              for k, v in (data.get("parameters") or {}).items()}
    slices = ()
    if raw_slices is not None:
        names = {m.model: m.name for m in models}
        slices = tuple(SliceSpec(names[ref], start, end, {
            k: _check_setting(method, k, v, f"slices[{i}].parameters", per_model=True)
            for k, v in sp.items()}) for i, (ref, start, end, sp) in enumerate(raw_slices))
    heads = data.get("heads") or ()
    if heads == "auto":
        heads = ("auto",)
    elif not (isinstance(heads, (list, tuple)) and all(isinstance(h, str) for h in heads)):
        raise UserError(f"heads: got {short_repr(heads)}; give 'auto' or a list of tensor-name prefixes")
    tied = data.get("tied") or {}
    if not (isinstance(tied, Mapping) and all(isinstance(v, str) for v in tied.values())):
        raise UserError(f"tied: got {short_repr(tied)}; give a mapping alias_name: source_name")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"seed: got {short_repr(seed)}; give an integer")
    hash_inputs = data.get("hash_inputs", True)
    if not isinstance(hash_inputs, bool):
        raise UserError(f"hash_inputs: got {short_repr(hash_inputs)}; give true or false")
    return MergeConfig(
        merge_method=method.name,
        models=tuple(models),
        base_model=base,
        parameters=params,
        dtype=_choice("dtype", data.get("dtype"), DTYPES),
        out_dtype=_choice("out_dtype", data.get("out_dtype"), DTYPES),
        tokenizer_source=data.get("tokenizer_source"),
        device=_choice("device", data.get("device", "auto"), DEVICES),
        max_shard_size=_size(data.get("max_shard_size", 5 * 10**9)),
        seed=seed,
        heads=tuple(heads),
        tied=dict(tied),
        hash_inputs=hash_inputs,
        bn_stats=_choice("bn_stats", data.get("bn_stats", "average"), ("average", "method")),
        root=root,
        slices=slices,
    )


def _slice_models(data: Mapping[str, Any], method: str, raw: Any
                  ) -> tuple[list[dict[str, Any]], list[tuple[str, int, int, dict[str, Any]]]]:
    """mergekit's ``slices:`` (passthrough only): the distinct models, and per slice (model,
    start, end, parameters: the source's over the slice's)."""
    if method != "passthrough":
        raise UserError(f"slices: supported with merge_method: passthrough only (got {method!r}); "
                        "for other methods list whole models under models:")
    if data.get("models"):
        raise UserError("slices: give either models: or slices:, not both")
    if data.get("heads"):
        raise UserError("slices: heads: cannot be combined with slices; remove heads:")
    if not isinstance(raw, list) or not raw:
        raise UserError("slices: must be a non-empty list of {sources: [{model: PATH, "
                        "layer_range: [START, END]}]}")
    models: list[dict[str, Any]] = []
    out = []
    for i, sl in enumerate(raw):
        where = f"slices[{i}]"
        if not isinstance(sl, Mapping) or set(sl) - {"sources", "parameters"}:
            raise UserError(f"{where}: expected {{sources: [...], parameters: {{...}}}}, got {sl!r}")
        sources = sl.get("sources")
        if not isinstance(sources, list) or len(sources) != 1:
            raise UserError(f"{where}.sources: passthrough takes exactly one source per slice, got "
                            f"{len(sources) if isinstance(sources, list) else sources!r}")
        src = sources[0]
        if not isinstance(src, Mapping) or not isinstance(src.get("model"), str) or \
                set(src) - {"model", "layer_range", "parameters"}:
            raise UserError(f"{where}.sources[0]: expected {{model: PATH, layer_range: [START, END], "
                            f"parameters: {{...}}}}, got {src!r}")
        lr = src.get("layer_range")
        if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(v, int) and
                                                              not isinstance(v, bool) for v in lr)
                and 0 <= lr[0] < lr[1]):
            raise UserError(f"{where}.sources[0].layer_range: got {lr!r}; give [START, END] with "
                            "0 <= START < END (END excluded)")
        if not any(m["model"] == src["model"] for m in models):
            models.append({"model": src["model"]})
        params = {**(sl.get("parameters") or {}), **(src.get("parameters") or {})}
        out.append((src["model"], lr[0], lr[1], params))
    return models, out
