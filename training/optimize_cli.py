"""``dlserve optimize``: the command line of `training.optimize`.

Cheap to import (argparse only): onnx, onnxruntime and scikit-learn load when
the command runs. A refused variant ends with its one line and exit 1 (as a
refused export does); other `training.errors.TrainingError`s exit 2 through
``dlserve.cli.main``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dlserve.argparsing import add_command, number, positive_int
from dlserve.errors import CliError

__all__ = ["register"]

KINDS = ("int8", "fp16", "opt")


def register(subparsers: Any) -> None:
    """Add ``optimize`` to the ``dlserve`` subparsers."""
    p = add_command(
        subparsers,
        "optimize",
        _optimize,
        epilog="Example: dlserve optimize --repository models --model digits-cnn --to int8",
    )
    p.add_argument("--repository", default="models", metavar="DIR", help="default: models")
    p.add_argument("--model", required=True, metavar="NAME", help="the model to optimize")
    p.add_argument("--to", choices=KINDS, default="int8", help="the variant (default int8)")
    p.add_argument(
        "--calibration",
        type=positive_int,
        default=256,
        metavar="N",
        help="int8: training rows to calibrate on (default 256)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=number(),
        default=0.5,
        metavar="PCT",
        help="largest held-out accuracy drop allowed, in percentage points (default 0.5)",
    )
    p.add_argument("--name", metavar="NEW", help="write a new model NEW instead of a version")
    p.add_argument(
        "--version", type=positive_int, metavar="V", help="the FP32 version to start from"
    )
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="report folder (runs)")
    p.add_argument(
        "--latency-seconds",
        type=number(0.0, inclusive=False),
        default=0.3,
        metavar="S",
        help="time spent on each latency figure (default 0.3)",
    )


def _optimize(args: argparse.Namespace) -> int:
    """a faster variant (int8, fp16, opt) as a new version, kept only if accuracy holds

    Build a faster variant of REPOSITORY/MODEL's newest FP32 version with ONNX Runtime's tools
    and write it as version N+1 (or as a new model --name): int8 = static QDQ quantization
    calibrated on the model's own training split; fp16 = float16 weights and math with FP32
    inputs/outputs (for the CUDA provider); opt = offline graph optimization (ORT_ENABLE_BASIC,
    portable). The variant is refused (exit 1, nothing written) if ONNX Runtime cannot load it
    or its held-out accuracy drops by more than --max-accuracy-drop points. A report (accuracy,
    max |delta| of probabilities, argmax agreement, size, latency at batch 1/8/64) is printed
    and written to RUNS_DIR/NAME/vN/optimize.json.
    """
    try:
        import onnx  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        raise CliError("optimize needs the train extra: pip install -e '.[train]'") from None
    from training.optimize import VariantRefused, optimize

    try:
        optimize(
            Path(args.repository),
            args.model,
            args.to,
            calibration=args.calibration,
            max_accuracy_drop=args.max_accuracy_drop,
            name=args.name,
            version=args.version,
            runs_dir=Path(args.runs_dir),
            latency_seconds=args.latency_seconds,
        )
    except VariantRefused as exc:
        raise CliError(str(exc), exit_code=1) from None
    return 0
