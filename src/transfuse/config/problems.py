"""Config validation errors as one message that lists every problem.

Unknown keys come first (with a did-you-mean and the valid keys at that level), then missing keys,
then invalid values; each names its full dotted key. Values are shortened (reprlib) and the list
is capped, so a huge value or a badly broken file never floods the terminal.
"""

from __future__ import annotations

import reprlib
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from transfuse.config.experiment import ExperimentConfig
from transfuse.errors import UserError, closest, did_you_mean

Loc = tuple[Any, ...]
MAX_PROBLEMS = 20
MAX_VALUE = 80
MAX_MESSAGE = 240

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 2, 4, 4, 4, 4
_repr.maxstring = _repr.maxother = 60


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: Any) -> str:
    """``repr(value)``, shortened to at most ``MAX_VALUE`` characters (for error messages)."""
    return _clip(_repr.repr(value), MAX_VALUE)


_short = short_repr


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _unwrap(tp: Any) -> Any:
    """``tp`` without ``Annotated[...]`` and ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif _is_union(tp) and len(args := [a for a in get_args(tp) if a is not type(None)]) == 1:
            tp = args[0]
        else:
            return tp


def _fields(tp: Any) -> list[str]:
    """The keys of ``tp`` if it is a config section, else none."""
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _walk(model: type[BaseModel], loc: Loc) -> tuple[Loc, Any, Loc]:
    """Split a pydantic error location into ``(key path, type there, rest)``. Pydantic tags the
    errors of each union member it tried (``class_weight.literal['none','balanced']``): the key
    path stops at the union, ``rest`` is what follows the member's tag."""
    node: Any = model
    path: list[Any] = []
    for i, part in enumerate(loc):
        node = _unwrap(node)
        if _is_union(node):
            return tuple(path), node, tuple(loc[i + 1:])
        path.append(part)
        args = get_args(node)
        if _fields(node):
            field = node.model_fields.get(part)
            node = field.annotation if field else None
        elif get_origin(node) is dict:
            node = args[1]
        elif get_origin(node) is tuple and isinstance(part, int) and Ellipsis not in args:
            node = args[part] if part < len(args) else None
        elif get_origin(node) in (list, tuple, set, frozenset):
            node = args[0] if args else None
        else:
            node = None
    return tuple(path), _unwrap(node), ()


def _dotted(path: Loc) -> str:
    return repr(_clip(".".join(str(p) for p in path), MAX_VALUE)) if path else "(top level)"


def _position(raw: Any, path: Loc) -> tuple[int, ...]:
    """Where ``path`` sits in the user's document (key order), for reporting in reading order."""
    out: list[int] = []
    for part in path:
        keys = list(raw) if isinstance(raw, dict) else range(len(raw)) if isinstance(raw, list) else []
        if part not in keys:
            out.append(len(keys))
            break
        out.append(list(keys).index(part))
        raw = raw[part]
    return tuple(out)


def _message(e: dict[str, Any]) -> str:
    return str(e["msg"]).removeprefix("Value error, ")


def validation_problems(err: ValidationError, model: type[BaseModel] = ExperimentConfig,
                        raw: Any = None) -> list[str]:
    """Every problem of ``err``: unknown keys, then missing keys, then invalid values, each group
    in the order of ``raw`` (the validated document) when given."""
    unknown: dict[Loc, str] = {}
    missing: dict[Loc, str] = {}
    invalid: dict[Loc, list[dict[str, Any]]] = {}
    suggested: set[Loc] = set()  # did-you-mean targets: reported as the typo, not as missing
    for e in err.errors(include_url=False):
        path, _, rest = _walk(model, tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            allowed = _fields(_walk(model, path[:-1])[1])
            near = closest(path[-1], allowed)
            if near is not None:
                suggested.add(path[:-1] + (near,))
            unknown[path] = (f"unknown key {_dotted(path)}; {did_you_mean(path[-1], allowed)}"
                             f"valid keys here: {', '.join(allowed)}")
        elif e["type"] == "missing" and not rest:
            missing[path] = f"key {_dotted(path)} is required; add it to the config"
        else:
            invalid.setdefault(path, []).append({**e, "rest": rest})
    found = [(0, _position(raw, k), text) for k, text in unknown.items()]
    found += [(1, _position(raw, k), text) for k, text in missing.items() if k not in suggested]
    for path, errs in invalid.items():
        value = next((e["input"] for e in errs if not e["rest"]), errs[0]["input"])
        why = _clip("; or ".join(dict.fromkeys(_message(e) for e in errs)), MAX_MESSAGE)
        text = f"key {_dotted(path)} has invalid value {_short(value)}: {why}"
        found.append((2, _position(raw, path), text))
    return [text for *_, text in sorted(found, key=lambda f: f[:2])]


def validation_error(err: ValidationError, source: str = "config", raw: Any = None,
                     model: type[BaseModel] = ExperimentConfig) -> UserError:
    """A :class:`UserError` listing every problem: ``SOURCE: problem`` on one line for a single
    problem, else ``SOURCE: N problems:`` and one item per problem (at most ``MAX_PROBLEMS``)."""
    problems = validation_problems(err, model, raw)
    if len(problems) == 1:
        return UserError(f"{source}: {problems[0]}")
    items = problems[:MAX_PROBLEMS]
    if len(problems) > MAX_PROBLEMS:
        items.append(f"... and {len(problems) - MAX_PROBLEMS} more")
    return UserError(f"{source}: {len(problems)} problems:", items)


def format_validation_error(err: ValidationError, source: str = "config", raw: Any = None) -> str:
    """The message of :func:`validation_error` for an :class:`ExperimentConfig`."""
    return str(validation_error(err, source, raw))
