"""The one config system (hf_posenc.settings) and the CLI's mapping of its errors to flags."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hf_posenc.cli.options import error_message, name_flags, parse_set
from hf_posenc.errors import SettingsError, UsageError
from hf_posenc.settings import apply_overrides, check_settings, dotted_keys, load_settings, setting, to_dict

SRC = Path(__file__).resolve().parents[1] / "src" / "hf_posenc"


@dataclass
class Inner:
    rate: float = setting(0.5, positive=True)
    depth: int = setting(2, minimum=1)


@dataclass
class Outer:
    name: str | None = None
    sizes: list[int] = setting(default_factory=lambda: [2, 4], minimum=2, non_empty=True)
    colours: list[str] = setting(default_factory=lambda: ["red"], choices=lambda: ["red", "blue"], label="colour",
                                 unique=True)
    mode: str = setting("fast", choices=("fast", "slow"))
    fraction: float = setting(0.1, minimum=0, below=1)
    inner: Inner = field(default_factory=Inner)
    extra: Inner | None = None
    table: dict = field(default_factory=dict)

    def cross_check(self, prefix: str = "") -> None:
        if self.inner.depth > len(self.sizes):
            raise SettingsError(f"{prefix}inner.depth must be <= the number of {prefix}sizes", field=f"{prefix}inner.depth")


def test_settings_error_is_a_value_error_with_the_field():
    assert issubclass(SettingsError, ValueError) and UsageError is SettingsError
    with pytest.raises(ValueError) as caught:
        load_settings(Outer, {"inner": {"depth": 0}}, "test")
    assert caught.value.field == "inner.depth"


def test_values_are_typed_and_converted_only_where_lossless():
    loaded = load_settings(Outer, {"sizes": [3, "1e1"], "inner": {"rate": "1e-3"}, "extra": {"depth": 1}}, "test")
    assert loaded.sizes == [3, 10] and loaded.inner.rate == 0.001 and isinstance(loaded.inner.rate, float)
    assert loaded.extra == Inner(depth=1)
    assert load_settings(Outer, None, "test") == Outer()
    assert load_settings(Outer, to_dict(loaded), "again") == loaded
    for raw, message in [
        ({"sizes": [2.5]}, r"sizes in test must be a list of integers, got \[2.5\]"),
        ({"inner": {"depth": 1.5}}, r"inner\.depth in test must be an integer, got 1.5"),
        ({"mode": 3}, r"mode in test must be a string, got 3"),
        ({"inner": [1]}, r"section 'inner' in test must be a mapping"),
        ([1, 2], r"test must be a YAML mapping"),
    ]:
        with pytest.raises(SettingsError, match=message):
            load_settings(Outer, raw, "test")


@pytest.mark.parametrize("raw, message", [
    ({"inner": {"dept": 3}}, r"unknown key 'inner\.dept' in test; did you mean 'inner\.depth'\?"),
    ({"sizes": []}, r"sizes must be a non-empty list"),
    ({"sizes": [1, 4]}, r"sizes must be integers >= 2, got 1"),
    ({"colours": ["red", "red"]}, r"colours must be a non-empty list without repeats; 'red' is listed twice"),
    ({"colours": ["green"]}, r"colours: unknown colour 'green'; choose from \['red', 'blue'\]"),
    ({"mode": "medium"}, r"mode must be one of \['fast', 'slow'\], got 'medium'"),
    ({"fraction": 1.0}, r"fraction must be in \[0, 1\), got 1.0"),
    ({"inner": {"rate": 0}}, r"inner\.rate must be a finite number > 0, got 0.0"),
    ({"extra": {"depth": 0}}, r"extra\.depth must be >= 1, got 0"),
    ({"inner": {"depth": 3}, "sizes": [2, 3]}, r"inner\.depth must be <= the number of sizes"),
])
def test_every_rule_names_the_field_the_value_and_what_is_allowed(raw, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(Outer, raw, "test")


def test_rules_also_hold_for_settings_changed_in_code():
    settings = Outer()
    settings.inner.depth = 0
    with pytest.raises(SettingsError, match=r"inner\.depth must be >= 1"):
        check_settings(settings)


def test_overrides_follow_the_field_types():
    raw = apply_overrides(Outer, {"inner": None}, {
        "inner.rate": "2e-2",        # parsed: a number
        "name": "007",               # a string field keeps the text as typed
        "sizes": "[4, 8]",           # YAML list
        "extra.depth": "3",          # an optional section is created
        "table.training.lr": "[1]",  # below a free-form mapping, the rest of the key is one entry
    })
    loaded = load_settings(Outer, raw, "test")
    assert loaded.inner.rate == 0.02 and loaded.name == "007" and loaded.sizes == [4, 8]
    assert loaded.extra.depth == 3 and loaded.table == {"training.lr": [1]}
    assert apply_overrides(Outer, {}, {"name": "null"}) == {"name": None}


@pytest.mark.parametrize("key, message", [
    ("inner.dpth", r"unknown config key 'inner\.dpth' in overrides; did you mean 'inner\.depth'\?"),
    ("mode.x", r"'mode' is not a section"),
    ("nothing", r"unknown config key 'nothing'"),
])
def test_unknown_override_keys_are_refused_with_a_suggestion(key, message):
    with pytest.raises(SettingsError, match=message):
        apply_overrides(Outer, {}, {key: "1"})


def test_dotted_keys_lists_nested_fields():
    keys = dotted_keys(Outer)
    assert "inner.depth" in keys and "extra.rate" in keys and "table" in keys and "inner" not in keys


def test_set_parsing_and_flag_names_belong_to_the_cli():
    assert parse_set(["a.b=1", " c = x=y "]) == {"a.b": "1", "c": "x=y"}
    with pytest.raises(SettingsError, match="--set expects key=value"):
        parse_set(["a.b"])
    args = argparse.Namespace(stride="4", max_tokens=None)
    name_flags(args, {"stride": "--stride", "max_tokens": "--max-tokens"})
    assert args.flag_names == {"stride": "--stride"}  # only flags the user gave
    error = SettingsError("stride (4) must be <= every length", field="stride")
    assert error_message(error, args.flag_names) == "--stride (4) must be <= every length"
    from_file = SettingsError("max_tokens must be >= 1, got 0", field="max_tokens")
    assert error_message(from_file, args.flag_names) == "max_tokens must be >= 1, got 0"
    other = SettingsError("unknown key 'x' (allowed: stride)", field="x")
    assert error_message(other, args.flag_names) == "unknown key 'x' (allowed: stride)"
    remedy = SettingsError("the folder holds a run; continue it with `resume` or choose another `output_dir`",
                           field="output_dir")
    flags = {"resume": "--resume", "output_dir": "--output-dir"}
    assert error_message(remedy, flags) == "the folder holds a run; continue it with --resume or choose another --output-dir"


def test_library_errors_name_no_command_line_flags():
    """Only hf_posenc.cli knows flags: a library message names arguments and config keys."""
    raise_with_flag = re.compile(r"""(?:Error|raise)\W[^\n]*["'][^"'\n]*(?<![\w-])--[a-z][a-z-]+""")
    offenders = []
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts:
            continue
        text = path.read_text()
        # message text of errors raised over several lines: join continuation strings
        for match in re.finditer(r"(?:raise \w+|\w+Error)\((?:[^()]|\([^()]*\))*\)", text, flags=re.S):
            if re.search(r"""["'][^"'\n]*(?<![\w-])--[a-z][a-z-]+""", match.group(0)):
                offenders.append(f"{path.relative_to(SRC)}: {match.group(0)[:100]}")
        offenders += [f"{path.relative_to(SRC)}: {line.strip()[:100]}" for line in text.splitlines()
                      if raise_with_flag.search(line)]
    assert not offenders, "\n".join(sorted(set(offenders)))
