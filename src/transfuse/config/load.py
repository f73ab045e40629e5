"""Reading, overriding, validating and writing experiment configs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from transfuse.config.experiment import ExperimentConfig
from transfuse.config.problems import validation_error
from transfuse.errors import UserError

#: Bounds on a YAML document: nesting depth, values after alias expansion, file size. A real
#: config is a few levels deep and a few hundred values; a 0.5 KB alias bomb expands past 10^9.
MAX_DEPTH = 50
MAX_VALUES = 20_000
MAX_FILE_BYTES = 16 << 20


def _depth_line(text: str) -> int | None:
    """The line where ``text`` first nests deeper than ``MAX_DEPTH`` (or None). Reads parser events,
    which need no recursion, so a 5,000-level document cannot overflow the stack here."""
    depth = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return ev.start_mark.line + 1
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _expanded_size(node: yaml.Node) -> int:
    """Values in ``node`` once every alias is expanded (an alias repeats its anchor's values);
    counted over the node graph, not by expanding. A recursive alias is a ValueError."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            raise ValueError("an alias refers to a collection that contains it (recursive)")
        active.add(id(n))
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        active.discard(id(n))
        sizes[id(n)] = min(total, MAX_VALUES + 1)  # enough to refuse; keeps the sums small
        return sizes[id(n)]

    return size(node)


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with bounds: nesting at most ``MAX_DEPTH`` levels, at most ``MAX_VALUES``
    values after alias expansion (so no alias bomb is ever expanded), no recursive aliases. A
    document over the bounds is a one-line :class:`UserError` naming ``where``; bad YAML raises
    ``yaml.YAMLError`` as ``safe_load`` does."""
    line = _depth_line(text)
    if line is not None:
        raise UserError(f"{where} line {line}: nested more than {MAX_DEPTH} levels deep; a config "
                        "needs a few levels, flatten the value")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            n = _expanded_size(node)
        except ValueError as e:
            raise UserError(f"{where}: {e}; write the value out instead of the alias") from None
        if n > MAX_VALUES:
            raise UserError(f"{where}: its aliases (*name) expand to more than {MAX_VALUES} values "
                            "(an alias bomb?); write the values out or use fewer aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()



def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], parsed YAML value)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.finetune.epochs=3")
    key, _, raw = item.partition("=")
    try:
        value = load_yaml(raw, f"--set {key.strip()}") if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``--set`` overrides applied (the caller's dict is untouched)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; a missing file or bad YAML is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; give the path of a YAML file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"config file {str(path)!r} is {path.stat().st_size >> 20} MB; a config is a "
                        f"few KB (limit {MAX_FILE_BYTES >> 20} MB): give the experiment's YAML file")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8", errors="replace"), f"config file {str(path)!r}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {str(path)!r}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {str(path)!r}: the top level must be a mapping of keys")
    return raw


def validate_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """``raw`` as an :class:`ExperimentConfig`; every problem is listed in one :class:`UserError`."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise validation_error(err, source, raw) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate a YAML config."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_config(raw, source=str(path))


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (every key, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
