"""The one config system: settings are dataclasses, loaded from YAML or dicts by one typed loader.

Every settings type of the package (the run config and its sections, compare, sweep, the task study) is a
plain dataclass. Its fields carry their rules in ``setting(...)`` metadata (a minimum, choices, "finite and
> 0", non-empty / no repeats for lists); rules that tie several fields together live in the class's
``cross_check(prefix)`` method. This module then gives them all the same behaviour:

* ``load_settings(cls, raw, source)``: a nested dict (as read from YAML) -> a checked ``cls``; unknown keys
  are refused with a "did you mean" suggestion, values are converted only where lossless ("1e-3" -> 0.001,
  1 -> 1.0) and nested sections, optional sections and lists are typed too.
* ``apply_overrides(cls, raw, overrides)``: dotted keys (``{"run.training.lr": "1e-3"}``) applied to the raw
  dict before loading. String values are read as YAML unless the field is a string (paths, names stay verbatim).
* ``check_settings(obj)``: the same rules for an object built or changed in code.

Every problem raises ``SettingsError`` (a ``ValueError``) naming the dotted field, the value and what is
allowed. Nothing here knows command-line flags: ``hf_posenc.cli`` maps errors to flags and exit codes.

Why a small loader of our own rather than transformers' ``HfArgumentParser``: that parser turns flat
dataclasses into argparse flags, while our settings are nested (a compare config holds a whole run config,
a sweep's search space has dotted keys of its own), come mostly from YAML files, and must report errors by
dotted path and file with a suggestion for a misspelt key. ``HfArgumentParser.parse_dict`` neither descends
into nested dataclasses nor checks ranges, and flag handling belongs to ``cli/`` anyway.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Union

import yaml

from .errors import SettingsError

_RULES = "hf_posenc"  # key of our rules in a dataclass field's metadata


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    minimum: float | None = None,
    below: float | None = None,
    positive: bool = False,
    choices: tuple | Callable[[], Any] | None = None,
    check: Callable[[Any], Any] | None = None,
    label: str = "value",
    non_empty: bool = False,
    unique: bool = False,
):
    """A dataclass field with rules checked by ``check_settings``.

    ``minimum`` / ``below``: ``minimum <= value < below``; ``positive``: finite and > 0; ``choices``: the
    allowed values (or a function returning them, for registries filled at run time); ``check``: a function that
    raises ``ValueError`` for a bad value, for rules a list of choices cannot state (its message is kept, after
    the field name: position-encoding patterns); for a list, the rules
    apply to every item, ``label`` names an item in messages ("unknown position encoding 'x'"), and
    ``non_empty`` / ``unique`` refuse an empty list and repeats. ``None`` is always allowed where the type is
    optional.
    """
    rules = {"minimum": minimum, "below": below, "positive": positive, "choices": choices, "check": check, "label": label,
             "non_empty": non_empty, "unique": unique}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_RULES: rules})


# ---- reading --------------------------------------------------------------------------------------------
def parse_yaml(text: str, source: str) -> Any:
    """Parsed YAML; a SettingsError naming ``source`` when it is malformed."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SettingsError(f"{source} is not valid YAML: {error}") from error


def read_settings_file(path: str | Path) -> tuple[Any, str]:
    """The parsed YAML of a config file and its description for messages (``config file 'x.yaml'``)."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"config file not found: {str(path)!r}", field="config")
    source = f"config file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SettingsError(f"{source} is not UTF-8 text (byte {error.start}); save it as UTF-8", field="config") from None
    return parse_yaml(text, source), source


# ---- loading --------------------------------------------------------------------------------------------
def load_settings(cls, raw: Any, source: str, prefix: str = ""):
    """Build ``cls`` from a nested dict and check every rule; ``prefix`` is the dotted path of a nested section."""
    instance = _build(cls, raw, source, prefix)
    check_settings(instance, prefix)
    return instance


def _build(cls, raw: Any, source: str, prefix: str):
    """``cls`` from a dict: keys and types checked (rules are checked afterwards, on the whole object)."""
    if raw is None:
        return cls()
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        what = f"section {prefix[:-1]!r} in {source} must be a mapping" if prefix else f"{source} must be a YAML mapping"
        raise SettingsError(f"{what} with keys {list(field_types(cls))}, got {raw!r}", field=prefix[:-1] or None)
    types_ = field_types(cls)
    values = {}
    for key, value in raw.items():
        if key not in types_:
            raise SettingsError(f"unknown key '{prefix}{key}' in {source}{suggest(f'{prefix}{key}', [prefix + f for f in types_])}",
                                field=f"{prefix}{key}")
        values[key] = _coerce(value, types_[key], f"{prefix}{key}", source)
    return cls(**values)


def _coerce(value, annotation, name: str, source: str):
    """Check ``value`` against an annotation, converting only where lossless (int -> float, "1e-3" -> float)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return _coerce(value, option, name, source)  # a section: its own errors are the useful ones
            try:
                return _coerce(value, option, name, source)
            except SettingsError:
                pass
    elif dataclasses.is_dataclass(annotation):
        return _build(annotation, value, source, f"{name}.")
    elif origin is list:
        if isinstance(value, list):
            try:
                return [_coerce(item, args[0], name, source) for item in value] if args else list(value)
            except SettingsError:
                pass  # the message names the list type and the whole list
    elif origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _float_or_none(value) if isinstance(value, str) else None  # "1e4": YAML reads it as a string
        if number is not None and math.isfinite(number) and number.is_integer():
            return int(number)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _float_or_none(value) is not None:  # YAML 1.1 reads "1e-3" as a string
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is Any:
        return value
    raise SettingsError(f"{name} in {source} must be {type_name(annotation)}, got {value!r}", field=name)


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# ---- rules ----------------------------------------------------------------------------------------------
def check_settings(instance, prefix: str = "") -> None:
    """Check every field rule, then nested sections, then the class's ``cross_check(prefix)``."""
    for spec in dataclasses.fields(instance):
        value = getattr(instance, spec.name)
        name = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_settings(value, f"{name}.")
        rules = spec.metadata.get(_RULES)
        if rules and value is not None:
            _check_rules(name, value, rules)
    cross_check = getattr(instance, "cross_check", None)
    if cross_check is not None:
        cross_check(prefix)


def _check_rules(name: str, value, rules: dict) -> None:
    if isinstance(value, list):
        if rules["non_empty"] and not value:
            raise SettingsError(f"{name} must be a non-empty list, got []", field=name)
        if rules["unique"] and len(set(map(repr, value))) != len(value):
            twice = next(item for i, item in enumerate(value) if item in value[:i])
            raise SettingsError(f"{name} must be a non-empty list without repeats; {twice!r} is listed twice: {value}",
                                field=name)
        for item in value:
            _check_value(name, item, rules, item_of_list=True)
    else:
        _check_value(name, value, rules, item_of_list=False)


def _check_value(name: str, value, rules: dict, item_of_list: bool) -> None:
    choices = rules["choices"]
    if choices is not None:
        allowed = list(choices() if callable(choices) else choices)
        if value not in allowed:
            if item_of_list:
                raise SettingsError(f"{name}: unknown {rules['label']} {value!r}; choose from {allowed}", field=name)
            raise SettingsError(f"{name} must be one of {allowed}, got {value!r}", field=name)
    if rules.get("check") is not None:
        try:
            rules["check"](value)
        except ValueError as error:
            raise SettingsError(f"{name}: {error}", field=name) from None
    if rules["positive"] and not (value > 0 and math.isfinite(value)):
        raise SettingsError(f"{name} must be a finite number > 0, got {value!r}", field=name)
    minimum, below = rules["minimum"], rules["below"]
    if minimum is not None and below is not None:
        if not minimum <= value < below:
            raise SettingsError(f"{name} must be in [{minimum}, {below}), got {value!r}", field=name)
    elif minimum is not None and (value < minimum or isinstance(value, float) and not math.isfinite(value)):
        if item_of_list:
            kind = "integers" if isinstance(value, int) and isinstance(minimum, int) else "numbers"
            raise SettingsError(f"{name} must be {kind} >= {minimum}, got {value!r}", field=name)
        raise SettingsError(f"{name} must be >= {minimum}, got {value!r}", field=name)


# ---- overrides ------------------------------------------------------------------------------------------
def apply_overrides(cls, raw: dict, overrides: dict[str, Any] | None) -> dict:
    """``raw`` with dotted overrides applied, following the field types of ``cls`` (``raw`` itself is changed).

    A key runs through nested sections (``run.training.lr``); below a free-form mapping field (a ``dict``,
    e.g. a sweep's search space) the rest of the key is one entry (``space.training.lr``). String values are
    parsed as YAML except for string fields.
    """
    for dotted, value in (overrides or {}).items():
        node, annotation, parts = raw, cls, dotted.split(".")
        for index, part in enumerate(parts):
            types_ = field_types(annotation)
            if part not in types_:
                raise SettingsError(f"unknown config key {dotted!r} in overrides{suggest(dotted, dotted_keys(cls))}",
                                    field=dotted)
            annotation = _strip_optional(types_[part])
            last = index == len(parts) - 1
            if last or not (dataclasses.is_dataclass(annotation) or annotation is dict or typing.get_origin(annotation) is dict):
                if not last:
                    raise SettingsError(f"unknown config key {dotted!r} in overrides: {part!r} is not a section"
                                        f"{suggest(dotted, dotted_keys(cls))}", field=dotted)
                node[part] = _from_string(value, types_[part])
                break
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise SettingsError(f"override {dotted!r}: {part!r} is not a section", field=dotted)
            node = node[part]
            if not dataclasses.is_dataclass(annotation):  # a free-form mapping: the rest of the key is one entry
                node[".".join(parts[index + 1:])] = _from_string(value, Any)
                break
    return raw


def _strip_optional(annotation):
    if typing.get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


def _from_string(value, annotation):
    """Strings as typed on a command line: verbatim for string fields (paths, names), YAML otherwise."""
    if not isinstance(value, str):
        return value
    union = typing.get_origin(annotation) in (Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    if str in options:
        return None if type(None) in options and value.strip().lower() in ("null", "none", "~") else value
    try:
        return yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        return value


# ---- introspection and messages -------------------------------------------------------------------------
def field_types(cls) -> dict[str, Any]:
    """Field name -> resolved annotation, for the fields a settings file may set."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def dotted_keys(cls, prefix: str = "") -> list[str]:
    """Every settable dotted key of ``cls`` (nested sections expanded)."""
    keys = []
    for name, annotation in field_types(cls).items():
        inner = _strip_optional(annotation)
        if dataclasses.is_dataclass(inner):
            keys.extend(dotted_keys(inner, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def suggest(key: str, allowed: list[str]) -> str:
    """``; did you mean 'x'? (allowed: ...)`` for a message about an unknown key."""
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {', '.join(allowed)})"


def type_name(annotation) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        return f"a list of {type_name(args[0]).split(' ', 1)[1]}s" if args else "a list"  # "an integer" -> integers
    if args:
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)", dict: "a mapping"}
    return names.get(annotation, str(annotation))


def to_dict(instance) -> dict:
    """The settings as plain data (what ``load_settings`` reads back)."""
    return {f.name: _plain(getattr(instance, f.name)) for f in dataclasses.fields(instance) if f.init}


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


__all__ = [
    "setting",
    "load_settings",
    "check_settings",
    "apply_overrides",
    "parse_yaml",
    "read_settings_file",
    "field_types",
    "dotted_keys",
    "suggest",
    "to_dict",
]
