"""The `dlserve` console script: one parser, subcommands registered by the
training and serving packages.

Subcommand modules must stay cheap to import (no torch, no onnxruntime at
module level): `dlserve --help` and `dlserve serve` never load PyTorch.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Sequence

from dlserve import __version__
from dlserve.errors import CliError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single stderr line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dlserve",
        description="Train, export and serve neural-network classifiers "
        "(PyTorch -> ONNX -> KServe V2 gRPC on ONNX Runtime).",
    )
    parser.add_argument("--version", action="version", version=f"dlserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    from serving import cli as serving_cli
    from training import cli as training_cli

    training_cli.register(sub)
    serving_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"dlserve {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"dlserve {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `dlserve train ... | head -2`: the reader left
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 141
    except Exception as exc:  # last resort: one line, traceback only on request
        if os.environ.get("DLSERVE_DEBUG"):
            raise
        print(
            f"dlserve {args.command}: error: {type(exc).__name__}: {exc} "
            "(set DLSERVE_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
