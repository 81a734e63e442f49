"""The one exception type that reaches the user as a single line and exit code 2."""


class UserError(Exception):
    """Bad input at the edge (CLI flag, config, data file, stored record).

    The message is shown as-is on one line, so it must name the bad value and what would be
    valid. Raising it never leaves partial state behind: callers validate before writing.
    """

    exit_code = 2
