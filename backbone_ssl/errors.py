"""The one exception type that the command line turns into a single line and exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration: what is wrong, where, and how to fix it, in one line."""

    exit_code = 2
