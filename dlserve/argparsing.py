"""argparse pieces shared by the command-line front ends.

Imports nothing of the project: any CLI (``dlserve.cli``, ``training.cli``,
``serving.cli``) may use it without importing another.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, NoReturn

__all__ = ["OneLineParser", "non_negative_int", "number", "positive_int"]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single stderr line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
