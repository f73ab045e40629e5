"""Merge methods: a decorator registers a typed function and reads its parameters from the signature.

A method is a pure function over the tensors of ONE parameter name::

    @merge_method("ties", paper="https://arxiv.org/abs/2306.01708", pretty_name="TIES")
    def ties(tensors: list[Tensor], base_tensor: Tensor, weight: list[float], density: list[float],
             normalize: bool = True, lambda_: float = 1.0) -> Tensor: ...

The signature is the method's schema (as in mergekit's ``easy_define``):

- ``tensors: list[Tensor]``: one float32 tensor per merged model (the base model excluded when the
  method takes ``base_tensor``), in config order.
- ``base_tensor: Tensor`` (base model required) or ``Tensor | None`` (optional).
- ``list[float]`` / ``list[int]`` / ``list[bool]``: a per-model parameter (``models[].parameters``;
  a top-level ``parameters`` value is the default for every model).
- ``float`` / ``int`` / ``bool`` / ``str`` / ``Literal[...]``: a global parameter (top-level ``parameters``).
- ``list[Tensor] | None``: extra tensors per model read from a file named by the model entry's key of
  the same name (Fisher diagonals, RegMean Gram matrices); ``None`` when a model has none for the tensor.
- ``ctx: TensorContext``: the tensor's name, the models' names and the merge seed.

A trailing underscore is dropped from the config key (``lambda_`` is ``lambda``).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from transfuse.errors import UserError
from transfuse.registry import Registry


@dataclass(frozen=True)
class TensorContext:
    """What a method may know besides the tensors: used to seed random masks per tensor and model."""

    name: str = ""
    model_names: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its config key, python argument, type and default."""

    key: str
    arg: str
    type: type
    default: Any = inspect.Parameter.empty
    choices: tuple[Any, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def check(self, value: Any, where: str) -> Any:
        """Coerce ``value`` to this parameter's type or raise a UserError naming ``where``."""
        if self.choices:
            if value not in self.choices:
                raise UserError(
                    f"{where}: parameter {self.key!r} got {value!r}; valid values: "
                    f"{', '.join(map(str, self.choices))}"
                )
            return value
        if self.type is bool:
            if isinstance(value, bool):
                return value
        elif self.type is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif self.type is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif isinstance(value, self.type):
            return value
        raise UserError(
            f"{where}: parameter {self.key!r} must be a {self.type.__name__}, got {value!r}"
        )


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method and the schema read from its signature."""

    name: str
    func: Callable[..., Tensor]
    paper: str
    pretty_name: str
    base: Literal["required", "optional", "none"]
    per_model: Mapping[str, Param]
    global_params: Mapping[str, Param]
    extras: tuple[str, ...] = ()
    uses_ctx: bool = False
    min_models: int = 1
    max_models: int | None = None
    order_independent: bool = True
    needs_evaluate: bool = False
    elementwise: bool = False  # output element i depends on input elements i only: run in blocks
    idempotent: bool = True  # merging copies of one model gives that model back
    notes: tuple[str, ...] = field(default=())

    @property
    def param_keys(self) -> list[str]:
        return sorted({*self.per_model, *self.global_params})

    def __call__(
        self,
        tensors: Sequence[Tensor],
        base_tensor: Tensor | None = None,
        *,
        ctx: TensorContext | None = None,
        extras: Mapping[str, list[Tensor] | None] | None = None,
        **params: Any,
    ) -> Tensor:
        """Run the method; ``params`` use config keys (``lambda``), per-model ones as lists."""
        kwargs: dict[str, Any] = {"tensors": list(tensors)}
        if self.base != "none":
            if self.base == "required" and base_tensor is None:
                raise UserError(f"merge method {self.name!r} needs a base_model")
            kwargs["base_tensor"] = base_tensor
        if self.uses_ctx:
            kwargs["ctx"] = ctx or TensorContext(
                model_names=tuple(f"model{i}" for i in range(len(tensors)))
            )
        unknown = set(params) - set(self.param_keys)
        if unknown:
            raise UserError(
                f"merge method {self.name!r} has no parameter {sorted(unknown)[0]!r}; "
                f"valid parameters: {', '.join(self.param_keys) or '(none)'}"
            )
        for key, p in {**self.per_model, **self.global_params}.items():
            if key not in params and p.required:
                raise UserError(f"merge method {self.name!r} needs parameter {key!r}")
            value = params.get(key, p.default)
            if key in self.per_model:
                value = list(value) if isinstance(value, (list, tuple)) else [value] * len(tensors)
                if len(value) != len(tensors):
                    raise UserError(f"merge method {self.name!r}: {len(value)} values of "
                                    f"{key!r} for {len(tensors)} models")
            kwargs[p.arg] = value
        for key in self.extras:
            kwargs[key] = (extras or {}).get(key)
        return self.func(**kwargs)


METHODS: Registry[MergeMethod] = Registry("merge method")


def _strip_optional(ann: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(ann)) == 2:
            return args[0], True
    return ann, False


def _parse_signature(func: Callable[..., Tensor]) -> dict[str, Any]:
    hints = typing.get_type_hints(func)
    sig = inspect.signature(func)
    if "tensors" not in sig.parameters:
        raise TypeError(f"merge method {func.__name__} must take 'tensors: list[Tensor]'")
    out: dict[str, Any] = {"base": "none", "per_model": {}, "global_params": {}, "extras": [],
                           "uses_ctx": False}
    for arg, p in sig.parameters.items():
        if arg == "tensors":
            continue
        ann, optional = _strip_optional(hints.get(arg, p.annotation))
        key = arg.removesuffix("_")
        if arg == "base_tensor":
            if ann is not Tensor:
                raise TypeError("'base_tensor' must be annotated Tensor or Tensor | None")
            out["base"] = "optional" if optional else "required"
        elif arg == "ctx":
            out["uses_ctx"] = True
        elif typing.get_origin(ann) is list:
            (inner,) = typing.get_args(ann)
            if inner is Tensor:
                out["extras"].append(arg)
            elif inner in (float, int, bool):
                out["per_model"][key] = Param(key, arg, inner, p.default)
            else:
                raise TypeError(f"{func.__name__}: unsupported list type for {arg!r}: {ann}")
        elif typing.get_origin(ann) is Literal:
            choices = typing.get_args(ann)
            out["global_params"][key] = Param(key, arg, type(choices[0]), p.default, choices)
        elif ann in (float, int, bool, str):
            out["global_params"][key] = Param(key, arg, ann, p.default)
        else:
            raise TypeError(f"{func.__name__}: parameter {arg!r} needs a supported annotation")
    return out


def merge_method(
    name: str,
    *,
    paper: str,
    pretty_name: str | None = None,
    min_models: int = 1,
    max_models: int | None = None,
    order_independent: bool = True,
    needs_evaluate: bool = False,
    elementwise: bool = False,
    idempotent: bool = True,
    notes: Sequence[str] = (),
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``func`` as merge method ``name`` (fails loudly on a duplicate name)."""

    def deco(func: Callable[..., Tensor]) -> Callable[..., Tensor]:
        spec = _parse_signature(func)
        METHODS.add(
            name,
            MergeMethod(
                name=name,
                func=func,
                paper=paper,
                pretty_name=pretty_name or name,
                base=spec["base"],
                per_model=spec["per_model"],
                global_params=spec["global_params"],
                extras=tuple(spec["extras"]),
                uses_ctx=spec["uses_ctx"],
                min_models=min_models,
                max_models=max_models,
                order_independent=order_independent,
                needs_evaluate=needs_evaluate,
                elementwise=elementwise,
                idempotent=idempotent,
                notes=tuple(notes),
            ),
        )
        return func

    return deco


def as_weights(values: Sequence[float], like: Tensor) -> Tensor:
    """Per-model scalars as a tensor broadcastable against ``torch.stack`` of tensors like ``like``."""
    w = torch.tensor([float(v) for v in values], dtype=like.dtype, device=like.device)
    return w.view(-1, *([1] * like.dim()))
