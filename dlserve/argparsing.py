"""argparse pieces shared by the command-line front ends.

Imports nothing of the project: any CLI (``dlserve.cli``, ``training.cli``,
``serving.cli``) may use it without importing another.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single stderr line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
