"""Errors shared by the library and the command line."""


class SettingsError(ValueError):
    """Bad input (a setting, an argument, a file) found before any work starts.

    The message names the field, the value and what is allowed, in the library's own terms (dotted config
    keys and argument names, never command-line flags). ``field`` is that name, when there is one: the CLI
    uses it to name the flag that set it, prints one line and exits with code 2.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# The name the CLI and older code use for the same error; ``except UsageError`` keeps working.
UsageError = SettingsError
