"""The `dlserve` console script: one parser, subcommands registered by the
training and serving packages.

Subcommand modules must stay cheap to import (no torch, no onnxruntime at
module level): `dlserve --help` and `dlserve serve` never load PyTorch.

This is the top of the import graph: only the ``__main__`` modules import it
(tests/test_imports.py). `main` turns the errors a user can fix into one
stderr line and an exit code: a `CliError` (the command line's own), a
`ClientError` (predict, bench) and the libraries' bases in `LIBRARY_ERRORS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from dlserve import __version__
from dlserve.argparsing import OneLineParser
from dlserve.errors import ClientError, CliError

#: The libraries' user-facing error bases, as (module, class): `main` ends a
#: command on one as on a `CliError` (its message, exit 2). They are looked up
#: among the loaded modules instead of imported: a module whose error was raised
#: is loaded, and ``dlserve --help`` stays free of pydantic and grpc.
LIBRARY_ERRORS = (
    ("training.errors", "TrainingError"),
    ("serving.workers", "WorkersError"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dlserve",
        description="Train, export and serve neural-network classifiers "
        "(PyTorch -> ONNX -> KServe V2 gRPC on ONNX Runtime).",
    )
    parser.add_argument("--version", action="version", version=f"dlserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    from dlserve import tune
    from serving import cli as serving_cli
    from training import cli as training_cli

    training_cli.register(sub)
    serving_cli.register(sub)
    tune.register(sub)
    return parser


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of an error the user can fix, or None for anything else."""
    if isinstance(exc, CliError):
        return exc.exit_code
    if isinstance(exc, ClientError):
        return 2
    for module, name in LIBRARY_ERRORS:
        base = getattr(sys.modules.get(module), name, None)
        if isinstance(base, type) and isinstance(exc, base):
            return 2
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print(f"dlserve {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `dlserve train ... | head -2`: the reader left
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 141
    except Exception as exc:
        exit_code = exit_code_for(exc)
        if exit_code is not None:
            print(f"dlserve {args.command}: error: {exc}", file=sys.stderr)
            return exit_code
        # last resort: one line, traceback only on request
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
