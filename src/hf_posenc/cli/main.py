"""The ``hf-posenc`` command line: one subcommand per module in ``hf_posenc.cli``.

Each command module defines ``register(subparsers)``, which adds its parser and sets ``handler`` (a
function taking the parsed arguments and returning an exit code). Modules are imported lazily, so a
broken or heavy command never slows down the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import SettingsError
from .options import error_message

# subcommand -> module that registers it (kept explicit: the order is the order in --help)
COMMAND_MODULES = {
    "train": "hf_posenc.cli.train",
    "eval": "hf_posenc.cli.eval",
    "compare": "hf_posenc.cli.compare",
    "sweep": "hf_posenc.cli.sweep",
    "push": "hf_posenc.cli.push",
    "bench": "hf_posenc.cli.bench",
    "figures": "hf_posenc.cli.figures",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-posenc",
        description="Train, evaluate, compare, benchmark and share Llama-style models with swappable position encodings.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # a real missing dependency, not a command not written yet
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except SettingsError as error:  # bad input, found before any work: one line naming the flag, exit code 2
        print(f"hf-posenc {args.command}: error: {error_message(error, getattr(args, 'flag_names', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hf-posenc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
