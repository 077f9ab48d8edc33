"""What every command shares: the config-file flags, ``--set KEY=VALUE``, and turning library errors into
one-line messages that name the flag the user typed.

Library functions raise ``SettingsError`` naming a field in their own terms (``stride``, ``repo_id``);
a command records which of its flags set which field (``name_flags``), and ``error_message`` puts the flag
in place of the field.
"""

from __future__ import annotations

import argparse
import re

from ..errors import SettingsError


def add_config_arguments(parser: argparse.ArgumentParser, *, config_help: str, required: bool, output_help: str,
                         set_example: str) -> None:
    """``--config``, ``--output-dir`` and the repeatable ``--set KEY=VALUE``."""
    parser.add_argument("--config", required=required, metavar="FILE.yaml", help=config_help)
    parser.add_argument("--output-dir", metavar="DIR", help=output_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config field, e.g. {set_example} (repeatable)")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs and CI)")


def parse_set(items: list[str] | None) -> dict[str, str]:
    """``--set`` values ``["training.lr=1e-3", ...]`` -> ``{"training.lr": "1e-3"}`` (typed later by the loader)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set expects key=value (e.g. training.lr=1e-3), got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def name_flags(args: argparse.Namespace, flag_names: dict[str, str], *, only_given: bool = True) -> None:
    """Record which flag sets which library field (``{"stride": "--stride"}``) for ``error_message``.

    With ``only_given``, a flag counts only if the user gave it (a bad value from a config file is then
    reported under its config key, not under a flag that was never typed).
    """
    known = dict(getattr(args, "flag_names", None) or {})
    for field, flag in flag_names.items():
        given = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if not only_given or given not in (None, False, []):
            known[field] = flag
    args.flag_names = known


def error_message(error: Exception, flag_names: dict[str, str] | None) -> str:
    """The error's message with flags in place of the library names they set.

    Library messages start with the offending field (``stride must be ...``) and quote other arguments they
    mention in backticks (``choose another `output_dir```): both become the flags that set them
    (``--stride must be ...``, ``choose another --output-dir``). Other text is left alone.
    """
    message = str(error)
    flag_names = flag_names or {}
    message = re.sub(r"`([\w.]+)`", lambda m: flag_names.get(m.group(1), m.group(0)), message)
    field = getattr(error, "field", None)
    flag = flag_names.get(field or "")
    if flag is None:
        return message
    if message.startswith(field) and not re.match(r"[\w.-]", message[len(field):len(field) + 1]):
        return flag + message[len(field):]
    return message if flag in message else f"{flag}: {message}"


def int_or_text(text: str | None):
    """A flag's text as an int when it is one; anything else is passed on for the library to refuse by name."""
    if text is None:
        return None
    stripped = text.strip()
    return int(stripped) if stripped.lstrip("+-").isdigit() else text
