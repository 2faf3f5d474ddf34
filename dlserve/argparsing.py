"""argparse pieces shared by the command-line front ends.

Imports nothing of the project: any CLI (``dlserve.cli``, ``training.cli``,
``serving.cli``) may use it without importing another.
"""

from __future__ import annotations

import argparse
import inspect
import math
from typing import Any, Callable, NoReturn

__all__ = ["OneLineParser", "add_command", "non_negative_int", "number", "positive_int"]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single stderr line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_command(
    sub: Any, name: str, run: Callable[[argparse.Namespace], int], **kwargs: Any
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` to the subparsers ``sub``; it calls ``run``.

    ``run``'s docstring describes the command, as the scripts' module
    docstrings describe them: its first paragraph is the command's line in
    ``dlserve --help``, the rest its ``--help`` description. argparse refills
    both, so the docstring's line breaks do not show. ``kwargs`` (an epilog)
    go to ``add_parser``.
    """
    summary, _, description = (inspect.getdoc(run) or "").partition("\n\n")
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary or None, description=description or None, **kwargs
    )
    parser.set_defaults(func=run)
    return parser


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1."""
    return _int(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 0."""
    return _int(text, 0, "an integer >= 0")


def _int(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def number(minimum: float | None = None, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse ``type``: a finite number, at least (or, not inclusive,
    over) ``minimum`` when one is given."""
    if minimum is None:
        what = "a number"
    else:
        what = f"a number {'>=' if inclusive else '>'} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        ok = minimum is None or (value >= minimum if inclusive else value > minimum)
        if not (math.isfinite(value) and ok):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = "number"  # argparse names the type in its message
    return parse
