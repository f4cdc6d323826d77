"""Typed stage configs: dataclasses loadable from YAML, overridable from the command line.

Each field carries its help text, and optionally its allowed choices and a check, in the
dataclass field metadata (see :func:`option`). The same metadata drives ``--help``, validation
and ``--print-config``, so the CLI, the KFP components and the PyTorchJob command all accept
exactly the same fields with the same errors. Nested dataclasses become dotted options
(``--optim.lr 1e-3``).

Two field states are typed rather than spelled in help text: a required field defaults to
:data:`REQUIRED` (so a section can be built partially, as a recipe does), and a field a recipe
fills is marked with ``option(preset=True)`` and holds ``None`` until :func:`apply_recipe` fills it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

Check = Callable[[Any], "str | None"]


class _Required:
    """The default of a field that has none: the config is invalid until it is given."""

    def __repr__(self) -> str:
        return "REQUIRED"

    def __deepcopy__(self, memo: dict) -> _Required:
        return self


REQUIRED: Any = _Required()


class ConfigError(ValueError):
    """A bad config value; the message names the field."""


def option(
    default: Any = REQUIRED,
    help: str = "",
    choices: tuple | None = None,
    check: Check | None = None,
    preset: bool = False,
):
    """A dataclass field with the metadata the CLI and validation use. No default: required.
    ``preset=True``: the stage's recipe gives the default (the field holds None until then)."""
    if preset:
        default = None
        help = f"{help} Default: from the preset."
    meta = {"help": help, "choices": choices, "check": check, "preset": preset}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# Reusable checks: each returns an error message or None.
def at_least(lo: float) -> Check:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def between(lo: float, hi: float) -> Check:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}"


def non_empty(v: Any) -> str | None:
    return None if v not in ("", None) else "is required"


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp`` or raise naming ``name``."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name}: is required (got nothing)")
    origin = typing.get_origin(tp)
    try:
        if dataclasses.is_dataclass(tp):
            if isinstance(value, tp):
                return value
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a mapping, got {value!r}")
            return from_dict(tp, value, prefix=f"{name}.")
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin in (list, tuple):
            args = typing.get_args(tp)
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)}")
                return tuple(_coerce(v, a, name) for v, a in zip(value, args))
            item = args[0] if args else Any
            items = [v if item is Any else _coerce(v, item, name) for v in value]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if tp is Any:
            return value
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {_type_name(tp)}, got {value!r}") from None
    raise ConfigError(f"{name}: unsupported field type {tp!r}")


def _type_name(tp: Any) -> str:
    tp, _ = _unwrap_optional(tp)
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def from_dict(cls, data: dict, prefix: str = ""):
    """Build and validate ``cls`` from a mapping; unknown or bad fields raise :class:`ConfigError`."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (known: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(data[name], hints[name], prefix + name) for name in fields if name in data}
    cfg = cls(**kwargs)
    validate(cfg, prefix)
    return cfg


def is_required(f: dataclasses.Field) -> bool:
    return f.default is REQUIRED


def validate(cfg, prefix: str = "") -> None:
    """Run every field's choices/check and the dataclass's own ``check()`` (cross-field rules)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is REQUIRED:
            raise ConfigError(f"{prefix}{f.name}: is required")
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
            continue
        if value is None and f.metadata.get("preset"):
            continue  # its recipe has not filled it yet (a nested section validates before its stage resolves)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{prefix}{f.name}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        check = f.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{prefix}{f.name}: {problem}; got {value!r}")
    own = getattr(cfg, "check", None)
    if callable(own):
        problem = own()
        if problem:
            field, _, message = problem.partition(": ")
            raise ConfigError(f"{prefix}{field}: {message}")


def to_dict(cfg) -> dict:
    out = dataclasses.asdict(cfg)
    return _plain(out)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_yaml(path: str) -> dict:
    from bevt_core import storage

    try:
        data = yaml.safe_load(storage.read_bytes(path)) or {}
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of field: value")
    return data


def _walk(cls, prefix: str = ""):
    """Yield (dotted name, field, type) for every leaf field, nested dataclasses flattened."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(_unwrap_optional(tp)[0]):
            yield from _walk(_unwrap_optional(tp)[0], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, tp


def _default_text(f) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    return repr(f.default_factory())


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--dotted-name`` option per field; values stay strings until :func:`from_args`."""
    parser.add_argument(
        "--config", metavar="FILE", help="YAML file of field: value (local or s3://); command-line options override it"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved config as YAML and exit without doing any work",
    )
    for name, f, tp in _walk(cls):
        flag = "--" + name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" Choices: {', '.join(map(str, choices))}."
        if is_required(f):
            help_text += " (required)"
        elif not f.metadata.get("preset"):
            help_text += f" Default: {_default_text(f)}."
        base, _ = _unwrap_optional(tp)
        if base is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(base) in (list, tuple):
            parser.add_argument(flag, dest=name, nargs="+", default=None, metavar="V", help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.split(".")[-1].upper(), help=help_text)


def from_args(cls, ns: argparse.Namespace):
    """YAML file (if any), then command-line overrides, then validation."""
    data = load_yaml(ns.config) if getattr(ns, "config", None) else {}
    for name, _, _ in _walk(cls):
        value = getattr(ns, name, None)
        if value is None:
            continue
        node = data
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(cls, data)


def fill_from(cfg: Any, values: Any, prefix: str = "") -> None:
    """Set every preset field of ``cfg`` still ``None`` from the same field of ``values`` (a dataclass of
    the same shape, or a recipe holding such sections), recursing into nested configs. A field
    ``values`` does not have is left alone."""
    for f in dataclasses.fields(cfg):
        if not hasattr(values, f.name):
            continue
        current, given = getattr(cfg, f.name), getattr(values, f.name)
        if dataclasses.is_dataclass(current):
            if given is not None:
                fill_from(current, given, f"{prefix}{f.name}.")
        elif current is None and f.metadata.get("preset"):
            setattr(cfg, f.name, given)


def unfilled(cfg: Any, prefix: str = "") -> str | None:
    """The first preset field still ``None``, by its dotted name."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            name = unfilled(value, f"{prefix}{f.name}.")
            if name:
                return name
        elif value is None and f.metadata.get("preset"):
            return f"{prefix}{f.name}"
    return None
