"""Errors shared by the CLI and the library."""


class UsageError(Exception):
    """Bad input found before any work starts.

    The CLI prints it as one line naming the problem (no traceback) and exits with code 2. Library
    functions raise it too, so scripts can catch bad input the same way.
    """
