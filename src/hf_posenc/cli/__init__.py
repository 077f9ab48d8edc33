"""The ``hf-posenc`` command line: the only layer that knows flag names, parses strings and sets exit codes."""

from .main import main

__all__ = ["main"]
