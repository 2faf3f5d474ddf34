"""Errors shared by the command-line front ends.

A `CliError` ends a command with its message as one line on stderr and a
non-zero exit, never a traceback. Raise it for anything the user can fix:
a bad argument value, a missing or unreadable file, an unwritable folder.
"""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure: `str(exc)` is the whole message."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
