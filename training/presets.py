"""The five presets of the contract, and ``python -m training.presets`` to (re)build them.

    python -m training.presets --all --repository models --fresh

trains every preset with its fixed seed and exports it into the repository
(``make models`` runs exactly this). ``--fresh`` replaces each preset's model
folder with one holding only the new version 1: the new folder is built under
``<repository>/.dlserve-tmp-*`` and swapped in by rename, one model at a time.

The gradient-trained presets use label smoothing 0.05 (`TrainConfig`'s default): it keeps the logits
within a few units (without it they grow to 20-35), so float32 rounding
differences between ONNX Runtime's and PyTorch's kernels stay well inside the
1e-5 parity bound (measured: about 1e-6 instead of 4-6e-6).

This module imports no torch at module level (the CLI reads `PRESETS`).
"""

from __future__ import annotations

import functools
import shutil
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from training.config import TrainConfig

if TYPE_CHECKING:
    from training.pipeline import TrainOutcome

__all__ = ["PRESETS", "main", "preset_config", "train_presets"]

PRESETS: dict[str, TrainConfig] = {
    "perceptron-linear": TrainConfig(
        name="perceptron-linear",
        preset="perceptron-linear",
        dataset="linear",
        model="perceptron",
        hidden=(),
        lr=1.0,
        epochs=100,  # PLA epoch limit; it converges in a few epochs
    ),
    # The seed's network: six hidden layers of 8, ReLU, Adam.
    "mlp-circle": TrainConfig(
        name="mlp-circle",
        preset="mlp-circle",
        dataset="circle",
        model="mlp",
        hidden=(8, 8, 8, 8, 8, 8),
        activation="relu",
        optimizer="adam",
        lr=0.01,
        epochs=300,
    ),
    "mlp-xor": TrainConfig(
        name="mlp-xor",
        preset="mlp-xor",
        dataset="xor",
        model="mlp",
        hidden=(8, 8),
        activation="relu",
        optimizer="adam",
        lr=0.01,
        epochs=300,
    ),
    "mlp-spiral": TrainConfig(
        name="mlp-spiral",
        preset="mlp-spiral",
        dataset="spiral",
        model="mlp",
        hidden=(32, 32, 32),
        activation="relu",
        optimizer="adam",
        lr=0.01,
        epochs=1000,
    ),
    "digits-cnn": TrainConfig(
        name="digits-cnn",
        preset="digits-cnn",
        dataset="digits",
        model="cnn",
        hidden=(),
        activation="relu",
        optimizer="adam",
        lr=0.002,
        epochs=15,
        batch_size=64,
        max_batch_size=256,
    ),
}


def preset_config(preset: str, **overrides: object) -> TrainConfig:
    """The preset's config with ``overrides`` (fields of `TrainConfig`) applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **overrides)  # type: ignore[arg-type]


def train_presets(
    names: Sequence[str],
    repository: Path,
    runs_dir: Path,
    *,
    fresh: bool = False,
    progress: bool = True,
) -> list[TrainOutcome]:
    """Train and export each preset; with ``fresh``, swap in a folder holding only v1."""
    from training.export import TMP_PREFIX, check_repository_writable
    from training.pipeline import run
    from training.report import write_metrics

    check_repository_writable(repository)
    outcomes: list[TrainOutcome] = []
    for name in names:
        cfg = PRESETS[name]
        if not fresh:
            outcomes.append(run(cfg, repository=repository, runs_dir=runs_dir, progress=progress))
            continue
        repository.mkdir(parents=True, exist_ok=True)
        staging = repository / f"{TMP_PREFIX}fresh-{uuid.uuid4().hex}"
        staging.mkdir()
        target = repository / cfg.name
        try:
            outcome = run(
                cfg,
                repository=staging,
                runs_dir=runs_dir,
                progress=progress,
                log=functools.partial(_print_replacing, str(staging / cfg.name), str(target)),
            )
            old = repository / f"{TMP_PREFIX}old-{uuid.uuid4().hex}"
            if target.exists():
                target.rename(old)
            (staging / cfg.name).rename(target)
            shutil.rmtree(old, ignore_errors=True)
            if outcome.report_dir is not None:
                outcome.metrics["model_path"] = str(target / "1" / "model.onnx")
                write_metrics(outcome.report_dir / "metrics.json", outcome.metrics)
            outcomes.append(outcome)
            print(f"{cfg.name}: {target} now holds only version 1")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return outcomes


def _print_replacing(old: str, new: str, line: str) -> None:
    print(line.replace(old, new))


def main(argv: Sequence[str] | None = None) -> int:
    from dlserve.cli import OneLineParser

    parser = OneLineParser(
        prog="python -m training.presets",
        description="Train the preset models and export them into a model repository.",
    )
    parser.add_argument("presets", nargs="*", metavar="PRESET", help=", ".join(PRESETS))
    parser.add_argument("--all", action="store_true", help="train all five presets")
    parser.add_argument("--repository", default="models", help="model repository (default: models)")
    parser.add_argument("--runs-dir", default="runs", help="report folder (default: runs)")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="replace each preset's model folder with one holding only the new version 1",
    )
    args = parser.parse_args(argv)
    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset {unknown[0]!r}; choose from {', '.join(PRESETS)}")
    names = list(PRESETS) if args.all else args.presets
    if not names:
        parser.error("name presets or pass --all")
    from training.export import ExportError

    try:
        train_presets(names, Path(args.repository), Path(args.runs_dir), fresh=args.fresh)
    except (ExportError, ValueError) as exc:
        print(f"training.presets: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
