"""Options declared once, on dataclass fields: their CLI flags, YAML keys and value conversion are derived here.

A field made with `option(...)` carries its help text, CLI group, choices and, where the flag is not the plain
`--field-name VALUE`, its spelling (`flag="--no-zero-shot"`) and the constant a value-less flag stores
(`const=False`; with `optional_value=True` a value may still follow, as in `--resume [DIR]`). The field's type
annotation says how a value is read, by `convert`, the one conversion used for flags and YAML alike:

    int, float (finite)    from numbers or text ("1e-3"; YAML 1.1 reads that as a string)
    bool                   true/false, yes/no, on/off, 1/0
    str                    text (numbers from YAML are taken as their text)
    list[str]              a YAML list or comma-separated text ("v_proj,o_proj")
    bool | str             true/false, else text (a path)
    dict                   a YAML mapping only (no flag)
    ... | None             also none/null (so "--max-steps none" clears a YAML value)

`add_arguments` makes the flags (defaults are `argparse.SUPPRESS`, so only what a user typed overrides a YAML
file), `coerce` converts a mapping of raw values with errors that name the key, the value and the type, and
`to_argv` writes an object back as the flags that rebuild it.

Options are declared beside the code that reads them: each method and objective plug-in names a dataclass of its
own (`Method.options`, `Objective.options`), and `compose` joins them onto the shared fields into one dataclass
(`sparta.train.config.TrainConfig`); `select` reads one plug-in's options back out of it. This module sits low
(layer 1) so that the plug-ins can use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, Field, dataclass
from functools import cache
from typing import Any, get_args, get_origin

from sparta.errors import SpartaError

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null")


def option(
    default: Any = MISSING,
    *,
    help: str,
    group: str,
    default_factory: Any = MISSING,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    const: Any = MISSING,
    optional_value: bool = False,
    metavar: str | None = None,
    cli: bool = True,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with the metadata `add_arguments`, `coerce` and `to_argv` read (`cli=False`: no flag;
    `aliases`: other flags, such as ``--mixed-precision``, whose YAML keys are accepted too)."""
    meta: dict[str, Any] = {"help": help, "group": group, "cli": cli, "optional_value": optional_value}
    for key, value in (("choices", choices), ("flag", flag), ("metavar", metavar), ("aliases", aliases)):
        if value is not None:
            meta[key] = value
    if const is not MISSING:
        meta["const"] = const
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Kind:
    """What a field's annotation accepts: a base kind (int, float, bool, str, list, dict, bool|str) and None."""

    base: str
    optional: bool

    def describe(self) -> str:
        text = {
            "int": "an integer",
            "float": "a finite number",
            "bool": "true or false",
            "str": "text",
            "list": "a list or comma-separated text",
            "dict": "a mapping",
            "bool|str": "true, false or a path",
        }[self.base]
        if self.optional and self.base == "bool|str":
            return "true, false, a path or none"
        return text + (" or none" if self.optional else "")

    def metavar(self) -> str:
        return {"int": "N", "float": "X", "bool": "BOOL", "list": "A,B"}.get(self.base, "TEXT")


def _kind_of(annotation: Any) -> Kind:
    is_union = get_origin(annotation) in (typing.Union, types.UnionType)
    args = get_args(annotation) if is_union else (annotation,)
    optional = type(None) in args
    rest = tuple(a for a in args if a is not type(None))
    if set(rest) == {bool, str}:
        return Kind("bool|str", optional)
    if len(rest) != 1:
        raise TypeError(f"unsupported option type {annotation!r}")
    base = get_origin(rest[0]) or rest[0]
    names = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "dict"}
    if base not in names:
        raise TypeError(f"unsupported option type {annotation!r}")
    return Kind(names[base], optional)


@cache
def kinds(cls: type) -> dict[str, Kind]:
    """{field name: Kind} of a dataclass, from its (string) annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: _kind_of(hints[f.name]) for f in dataclasses.fields(cls)}


def convert(kind: Kind, value: Any) -> Any:
    """`value` (typed from YAML, or text from a flag) as `kind`; ValueError when it is not one."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
        if kind.optional:
            return None
        raise ValueError
    base = kind.base
    if base == "bool":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        text = value.strip().lower() if isinstance(value, str) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError
    if base == "bool|str":  # only the words true/false are a bool: any other text is a path
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            return True if text == "true" else False if text == "false" else value
        raise ValueError
    if isinstance(value, bool):  # YAML's yes/no/true/false are never a number or a name
        raise ValueError
    if base == "int":
        if isinstance(value, str):
            value = value.strip()
            value = int(value) if value.lstrip("+-").isdigit() else float(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    if base == "float":
        number = float(value) if isinstance(value, int | float | str) else math.nan
        if not math.isfinite(number):
            raise ValueError
        return number
    if base == "str":
        if not isinstance(value, str | int | float):
            raise ValueError
        return str(value)
    if base == "list":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str | int | float) for i in items):
            raise ValueError
        return [str(i).strip() for i in items if str(i).strip()]
    if base == "dict" and isinstance(value, dict):
        return dict(value)
    raise ValueError


def convert_field(cls: type, name: str, value: Any, where: str) -> Any:
    """`convert` for one field of `cls`; a SpartaError naming `where` (the key or flag), the value and the type."""
    kind = kinds(cls)[name]
    try:
        return convert(kind, value)
    except (ValueError, TypeError, OverflowError):
        unset = value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        why = " (this setting cannot be unset)" if unset else ""
        raise SpartaError(f"{where}: expected {kind.describe()}, got {value!r}{why}") from None


def coerce(cls: type, values: dict[str, Any], where: Any = "{}") -> dict[str, Any]:
    """Every known key of `values` converted (unknown keys are left for the caller to report).

    `where` is a format string for the key in error messages ("run.yaml: {}") or a function of the name."""
    label = where if callable(where) else where.format
    known = kinds(cls)
    return {k: convert_field(cls, k, v, label(k)) if k in known else v for k, v in values.items()}


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def alias_keys(cls: type) -> dict[str, str]:
    """{YAML key of an alias flag: field name}, e.g. ``mixed_precision`` -> ``precision``."""
    return {
        a.lstrip("-").replace("-", "_"): f.name
        for f in dataclasses.fields(cls)
        for a in f.metadata.get("aliases", ())
    }


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def cli_fields(cls: type) -> list[Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def add_arguments(groups: dict[str, argparse._ArgumentGroup], cls: type) -> None:
    """One flag per option field of `cls`, each in the argument group its metadata names (a key of `groups`)."""
    kind_of = kinds(cls)
    for f in cli_fields(cls):
        meta, kind = f.metadata, kind_of[f.name]
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(f)}
        if "const" in meta and meta["optional_value"]:
            kw.update(nargs="?", const=meta["const"], metavar=meta.get("metavar") or kind.metavar())
        elif "const" in meta:
            kw.update(action="store_const", const=meta["const"])
        elif meta.get("choices"):
            kw["choices"] = (*meta["choices"], "none") if kind.optional else tuple(meta["choices"])
        else:
            kw["metavar"] = meta.get("metavar") or kind.metavar()
        groups[meta["group"]].add_argument(flag_of(f), *meta.get("aliases", ()), **kw)


def _help(f: Field) -> str:
    """The field's help with its default; '%' is escaped for argparse."""
    default = default_of(f)
    hidden = default is None or default is False or "const" in f.metadata  # (0 and 0.0 are shown)
    shown = "" if hidden else f" (default: {_text(default)})"
    return (f.metadata["help"] + shown).replace("%", "%%")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "none" if value is None else repr(value) if isinstance(value, float) else str(value)


def to_argv(obj: Any, always: tuple[str, ...] = ()) -> list[str]:
    """The flags that rebuild `obj` from the defaults (fields equal to their default are left out, except
    `always`); a SpartaError for a value no flag can express (a dict, a list item holding a comma)."""
    argv: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value == default_of(f) and f.name not in always:
            continue
        if not f.metadata.get("cli", False):
            raise SpartaError(f"{f.name} has no command-line flag; give it in a YAML file")
        flag, meta = flag_of(f), f.metadata
        if "const" in meta and value == meta["const"]:
            argv.append(flag)
            continue
        if "const" in meta and not meta["optional_value"]:
            raise SpartaError(f"{f.name}={value!r} has no command-line flag; give it in a YAML file")
        if isinstance(value, str) and value.strip().lower() in _NONE:  # would read back as None
            raise SpartaError(
                f"{f.name}: the text {value!r} has no command-line spelling; give it in a YAML file"
            )
        if isinstance(value, list) and any("," in str(v) for v in value):
            raise SpartaError(f"{f.name}: the items of {value!r} hold commas; give it in a YAML file")
        text = _text(value)
        argv += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    return argv


def compose(name: str, base: type, parts: Sequence[type], *, module: str, doc: str) -> type:
    """A dataclass `name` with the fields of `base` followed by those of each of `parts` in order (the methods'
    and objectives' options dataclasses), each once, and `parts` as its `option_parts`. Two parts share a field
    only by inheriting it from one declaration (one place for each option); a field declared twice is a
    TypeError."""
    declared = {f.name: f for f in dataclasses.fields(base)}
    added: list[tuple[str, Any, Field]] = []
    for part in parts:
        hints = typing.get_type_hints(part)
        for f in dataclasses.fields(part):
            if f.name in declared:
                if declared[f.name] is not f:
                    raise TypeError(f"option {f.name} is declared twice (in {part.__qualname__} and before)")
                continue
            declared[f.name] = f
            copy = dataclasses.field(
                default=f.default, default_factory=f.default_factory, metadata=f.metadata
            )
            added.append((f.name, hints[f.name], copy))
    namespace = {"__doc__": doc, "option_parts": tuple(parts)}
    cls = dataclasses.make_dataclass(name, added, bases=(base,), namespace=namespace)
    cls.__module__ = module  # (where it is importable from: pickling and repr)
    return cls


def select(part: type, settings: Any) -> Any:
    """The `part` options dataclass holding the values of its fields in `settings` (a composed config)."""
    return part(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(part) if f.init})
