"""Errors of the ``dlserve`` command line and its tools.

Errors::

    Exception
    ├── CliError       a user-facing failure of a command: its message, one line, and an exit code
    └── ClientError    ``dlserve predict`` / ``dlserve bench``: bad --data or flags, an
                       unreachable server, an error the server answered, an unwritable --json

`dlserve.cli.main` ends a command on either with the message as one line on
stderr and a non-zero exit (2 unless a `CliError` says otherwise), never a
traceback. Only the command-line layer (``dlserve/``, ``serving/cli.py``,
``training/cli.py``) raises `CliError`; the libraries raise their own errors
(`training.errors.TrainingError`, `serving.workers.WorkersError`, ...) and
the command-line layer translates them (tests/test_imports.py checks who
imports this module).
"""

from __future__ import annotations

__all__ = ["CliError", "ClientError"]


class CliError(Exception):
    """A user-facing failure: `str(exc)` is the whole message."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ClientError(Exception):
    """A request of ``dlserve predict`` or ``dlserve bench`` that the user can
    fix did not go through: `str(exc)` is the whole message."""
