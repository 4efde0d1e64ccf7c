"""Settings declared once: a dataclass field becomes a CLI option, a TOML key and a checked value.

A stage's settings are a dataclass whose fields are made with `setting(default, help, ...)`:
type (from the annotation), default, help text, and where it applies the allowed values
(`choices`, `low`/`high`) and a `convert` function. From those fields come

- the command's options (`add_options`, as transformers' `HfArgumentParser` does): `--batch-size`
  for `batch_size`; a flag for a bool that defaults to False, `--no-<name>` for one that
  defaults to True; a comma-separated value for a list or tuple;
- the keys of the stage's TOML table (`build`, the same names with underscores);
- validation (`build`): unknown keys (with the closest known name), wrong types, values out of
  range or not among the choices, and the dataclass's own `check()` for rules that tie fields;
- the equivalent command line of a set of values (`to_argv`).

A field whose type is itself a settings dataclass is flattened: its fields become options of
the parent (names must not collide). This module imports nothing heavy: building a parser must
not import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING
from functools import cache
from typing import Any

from cifake_lib.core.errors import CifakeError


class SettingError(CifakeError):
    """A setting is unknown, of the wrong type or out of range (CLI exit status 2)."""


def setting(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING,
            choices: Sequence[Any] | None = None, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, convert: Callable[[Any], Any] | None = None,
            flags: Sequence[str] | None = None, key: str | None = None, metavar: str | None = None,
            group: str | None = None, nargs: str | None = None, positional: bool = False,
            required: bool = False, cli: bool = True, show_default: str | None = None) -> Any:
    """A dataclass field with what the CLI, TOML and validation need (see the module docstring).

    low/high: inclusive bounds (exclusive with low_open/high_open) for numbers and for each
    element of a list. convert: applied to the typed value (e.g. "text,image" -> "both"); it
    raises ValueError for a bad value. flags: the CLI spelling(s) when not the default (e.g.
    ("--quiet",) for progress=True). key: the CLI/TOML name when not the field's name.
    cli=False: set by the program, not by the user (not an option, not a TOML key).
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "low": low,
            "high": high, "low_open": low_open, "high_open": high_open, "convert": convert,
            "flags": tuple(flags) if flags else None, "key": key, "metavar": metavar, "group": group,
            "nargs": nargs, "positional": positional, "required": required, "cli": cli,
            "show_default": show_default}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Option:
    """One user-facing setting: its name, where it lives in the dataclass, its type and rules."""

    key: str  # CLI/TOML name, with underscores
    path: tuple[str, ...]  # attribute path from the top dataclass
    kind: Any  # bool, int, float, str, or (list, element type)
    optional: bool  # None is allowed
    default: Any
    meta: Mapping[str, Any]

    @property
    def flags(self) -> tuple[str, ...]:
        if self.meta.get("flags"):
            return self.meta["flags"]
        if self.kind is bool and self.default is True:
            return ("--no-" + self.key.replace("_", "-"),)
        return ("--" + self.key.replace("_", "-"),)

    @property
    def is_list(self) -> bool:
        return isinstance(self.kind, tuple)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported settings type {tp!r}")
        return args[0], True
    return tp, False


def _kind(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        element = args[0] if args else str
        if element not in (int, float, str):
            raise TypeError(f"unsupported element type in {tp!r}")
        return (origin, element)
    if tp in (bool, int, float, str):
        return tp
    raise TypeError(f"unsupported settings type {tp!r}")


@cache
def options(cls: type) -> tuple[Option, ...]:
    """The user-facing settings of `cls`, nested settings dataclasses flattened, in field order."""
    hints = typing.get_type_hints(cls)
    out: list[Option] = []
    for f in dataclasses.fields(cls):
        tp, optional = _split_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out += [dataclasses.replace(o, path=(f.name, *o.path)) for o in options(tp)]
            continue
        if not f.metadata.get("cli", True) or "help" not in f.metadata:
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(Option(key=f.metadata.get("key") or f.name, path=(f.name,), kind=_kind(tp),
                          optional=optional, default=default, meta=f.metadata))
    seen: dict[str, Option] = {}
    for o in out:
        if o.key in seen:
            raise TypeError(f"{cls.__name__}: two settings named {o.key!r}")
        seen[o.key] = o
    return tuple(out)


def option_map(classes: Iterable[type]) -> dict[str, tuple[type, Option]]:
    """{key: (class, option)} over several settings classes; a key in two of them is an error."""
    out: dict[str, tuple[type, Option]] = {}
    for cls in classes:
        for o in options(cls):
            if o.key in out:
                raise TypeError(f"setting {o.key!r} is declared by both {out[o.key][0].__name__} and {cls.__name__}")
            out[o.key] = (cls, o)
    return out


# ---------------------------------------------------------------------------
# Values: type, range, choices
# ---------------------------------------------------------------------------


def _scalar(kind: type, value: Any, name: str) -> Any:
    if isinstance(value, str) and kind is not str:  # from the command line
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() in ("true", "1", "yes", "on"):
                    return True
                if text.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            return kind(text)
        except ValueError:
            raise SettingError(f"{name} must be {_type_name(kind)}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool) or kind is not bool and (
            not isinstance(value, kind) or isinstance(value, bool)):
        raise SettingError(f"{name} must be {_type_name(kind)}, got {value!r} ({type(value).__name__})")
    return value


def _type_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def _check_range(o: Option, value: Any, name: str) -> None:
    low, high = o.meta.get("low"), o.meta.get("high")
    if isinstance(value, float) and not math.isfinite(value) and (low is not None or high is not None):
        raise SettingError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if o.meta.get("low_open") else value < low):
        raise SettingError(f"{name} must be {'>' if o.meta.get('low_open') else '>='} {low:g}, got {value!r}")
    if high is not None and (value >= high if o.meta.get("high_open") else value > high):
        raise SettingError(f"{name} must be {'<' if o.meta.get('high_open') else '<='} {high:g}, got {value!r}")
    choices = o.meta.get("choices")
    if choices is not None and value not in choices:
        raise SettingError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def coerce(o: Option, value: Any, name: str | None = None) -> Any:
    """`value` (a CLI string or a TOML value) as the option's type, checked; raises SettingError.

    A scalar is typed first, then passed to the option's `convert`; a list option with a
    `convert` gets the raw value (e.g. "1600:400"). Ranges and choices apply to the result.
    """
    name = name or o.key
    if value is None:
        if o.optional:
            return None
        raise SettingError(f"{name} must be set (it has no 'none' value)")
    convert = o.meta.get("convert")
    if not o.is_list:
        value = _scalar(o.kind, value, name)
    elif convert is None:
        container, element = o.kind
        if isinstance(value, str):
            items = [v for v in (x.strip() for x in value.split(",")) if v]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise SettingError(f"{name} must be a list or a comma-separated string, got {value!r}")
        value = container(_scalar(element, v, f"{name} (element {v!r})") for v in items)
    if convert is not None:
        try:
            value = convert(value)
        except (ValueError, TypeError) as e:
            raise SettingError(f"{name}: {e}") from None
    if value is not None:
        for v in value if o.is_list else [value]:
            _check_range(o, v, name)
    return value


def negated(key: str, value: Any, by_key: Mapping[str, Option]) -> tuple[str, Any]:
    """`no_flip = true` == `flip = false`: a "no_" key of a true-by-default switch (`by_key`:
    {key: Option}) as the switch's own key and value; any other key unchanged."""
    o = by_key.get(key[3:]) if key.startswith("no_") and key not in by_key else None
    if o is None or o.kind is not bool or o.default is not True:
        return key, value
    return o.key, (not value) if isinstance(value, bool) else value


def build(cls: type, values: Mapping[str, Any] | None = None, *, where: str = "",
          defaults: Mapping[str, Any] | None = None, flag_names: bool = False, check: bool = True) -> Any:
    """An instance of `cls` from {key: value}: unknown keys, types and ranges checked, then `check()`.

    defaults: values used for keys absent from `values` (e.g. the training seed defaulting to
    the data seed). where: prefixes messages ("--config my.toml [cnn]"). flag_names: name options
    by their CLI flag in messages (`--epochs`), else by key (`epochs`).
    """
    by_key = {o.key: o for o in options(cls)}
    values = dict(negated(k, v, by_key) for k, v in (values or {}).items())
    unknown = [k for k in values if k not in by_key]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(by_key), n=1)
        raise SettingError(f"{_prefix(where)}unknown setting {unknown[0]!r}"
                           + (f" (did you mean {hint[0]!r}?)" if hint else "")
                           + f"; known: {', '.join(by_key)}")
    tree: dict[str, Any] = {}
    for key, o in by_key.items():
        label = _prefix(where) + (o.flags[0] if flag_names and not o.meta.get("positional") else key)
        if key in values:
            value = coerce(o, values[key], label)
        elif defaults and key in defaults:
            value = coerce(o, defaults[key], label)
        else:
            continue
        node = tree
        for part in o.path[:-1]:
            node = node.setdefault(part, {})
        node[o.path[-1]] = value
    obj = _instantiate(cls, tree)
    if check:
        run_checks(obj, where)
    return obj


def _instantiate(cls: type, tree: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp, _ = _split_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _instantiate(tp, tree.get(f.name, {}))
        elif f.name in tree:
            kwargs[f.name] = tree[f.name]
    try:
        return cls(**kwargs)
    except ValueError as e:  # a __post_init__ refusing a value
        raise SettingError(str(e)) from None


def run_checks(obj: Any, where: str = "") -> None:
    """Call `check()` of `obj` and of its nested settings; a ValueError becomes a SettingError."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            run_checks(value, where)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except SettingError:
            raise
        except ValueError as e:
            raise SettingError(f"{_prefix(where)}{e}") from None


def _prefix(where: str) -> str:
    # "[cnn] epochs must be ...", "cifake cnn: --epochs must be ..."
    return "" if not where else f"{where} " if where.startswith("[") else f"{where}: "


def to_mapping(obj: Any) -> dict[str, Any]:
    """{key: value} of every user-facing setting of a settings instance (tuples as lists)."""
    out = {}
    for o in options(type(obj)):
        value = obj
        for part in o.path:
            value = getattr(value, part)
        out[o.key] = list(value) if isinstance(value, tuple) else value
    return out


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def _default_text(o: Option) -> str:
    if o.meta.get("show_default") is not None:
        return o.meta["show_default"]
    if o.kind is bool:
        return ""
    d = o.default
    if d is None:
        return ""
    if isinstance(d, list | tuple):
        return ",".join(map(str, d))
    return f"{d:g}" if isinstance(d, float) else str(d)


def add_options(parser: argparse.ArgumentParser, *classes: type, skip: Iterable[str] = ()) -> None:
    """Add an option for every setting of `classes` (except the keys in `skip`) to `parser`.

    Values are parsed and checked by `build`, not by argparse, so the CLI and TOML give the same
    messages. Options the user does not give are absent from the namespace (argparse.SUPPRESS):
    their defaults come from the dataclass.
    """
    skip = set(skip)
    groups: dict[str, Any] = {}
    for _, o in option_map(classes).values():
        if o.key in skip:
            continue
        title = o.meta.get("group")
        target = parser if not title else groups.setdefault(title, parser.add_argument_group(title))
        default = _default_text(o)
        help_text = o.meta["help"] + (f" (default {default})" if default else "")
        help_text = help_text.replace("%", "%%")
        if o.meta.get("positional"):
            target.add_argument(o.key, nargs=o.meta.get("nargs") or None, metavar=o.meta.get("metavar"),
                                help=help_text)
        elif o.kind is bool:
            target.add_argument(*o.flags, dest=o.key, action="store_const", const=not o.default,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            metavar = o.meta.get("metavar") or (None if o.meta.get("choices") else o.key.upper())
            if o.meta.get("choices") and not metavar:
                metavar = "{" + ",".join(map(str, o.meta["choices"])) + "}"
            target.add_argument(*o.flags, dest=o.key, nargs=o.meta.get("nargs"), metavar=metavar,
                                default=argparse.SUPPRESS, required=o.meta.get("required", False),
                                help=help_text)


def given(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of `cls`'s settings that the command line gave."""
    keys = {o.key for o in options(cls)}
    return {k: v for k, v in vars(namespace).items() if k in keys}


def to_argv(classes: type | Sequence[type], values: Mapping[str, Any]) -> list[str]:
    """The command-line options that give `values` ({key: value}) to `classes`' settings."""
    known = option_map([classes] if isinstance(classes, type) else classes)
    argv: list[str] = []
    positional: list[str] = []
    by_key = {k: o for k, (_, o) in known.items()}
    for key, value in (negated(k, v, by_key) for k, v in values.items()):
        if key not in known:
            raise SettingError(f"unknown setting {key!r}")
        o = known[key][1]
        if o.meta.get("positional"):
            positional += [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
        elif o.kind is bool:
            if bool(value) != bool(o.default):
                argv.append(o.flags[0])
        elif value is None:
            continue
        elif o.meta.get("nargs") in ("+", "*"):
            argv += [o.flags[0], *map(str, value)]
        elif isinstance(value, list | tuple):
            argv += [o.flags[0], ",".join(map(str, value))]
        else:
            argv += [o.flags[0], str(value)]
    return argv + positional


# ---------------------------------------------------------------------------
# TOML out: what `cifake run --print-config` prints and `--config` reads back
# ---------------------------------------------------------------------------


def _toml_value(value: Any, where: str) -> str:
    import json
    import math

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, where) for v in value if v is not None) + "]"
    raise TypeError(f"{where}: cannot write {type(value).__name__} {value!r} as TOML")


def to_toml(tables: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """{table: {key: value}} as TOML that tomllib reads back to the same values: a None value (TOML has
    no null: "the default") is left out, a nested dict is a sub-table (`[methods.flyp]`)."""
    lines = [f"# {line}" for line in header.splitlines()]

    def table(name: str, values: Mapping[str, Any]) -> None:
        lines.append(f"\n[{name}]")
        subs = {}
        for key, value in values.items():
            if isinstance(value, Mapping):
                subs[key] = value
            elif value is not None:
                lines.append(f"{key} = {_toml_value(value, f'[{name}] {key}')}")
        for key, value in subs.items():
            table(f"{name}.{key}", value)

    for name, values in tables.items():
        table(name, values)
    return "\n".join(lines).lstrip("\n") + "\n"


__all__ = ["Option", "SettingError", "add_options", "build", "coerce", "given", "negated", "option_map", "options",
           "run_checks", "setting", "to_argv", "to_mapping", "to_toml"]
