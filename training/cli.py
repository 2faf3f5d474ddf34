"""``dlserve train`` and ``dlserve experiment``: the training stage's command line.

Cheap to import: argparse only. PyTorch is imported when a command runs, so
``dlserve --help`` works on a serving-only install. Everything argparse can
check (choices, numbers, ``--hidden``) fails with one usage line before torch
is loaded.

The training modules raise `training.errors.TrainingError`s, which
``dlserve.cli.main`` ends the command on (one stderr line, exit 2); this
module raises `CliError` for what only it knows: inconsistent flags, the
missing train extra, and a refused export's exit code 1.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from dlserve.argparsing import add_command, non_negative_int, number, positive_int
from dlserve.errors import CliError
from training.config import ACTIVATIONS, DATASETS, MODELS, OPTIMIZERS, TrainConfig
from training.presets import PRESETS

__all__ = ["register"]

EXPERIMENTS = ("activations", "perceptron-limits", "optimizers", "sensitivity")
TRAIN_EXTRA_HINT = "training needs the train extra: pip install -e '.[train]'"


def _hidden(text: str) -> tuple[int, ...]:
    """``8,8`` -> (8, 8); an empty string means no hidden layer."""
    if text.strip() == "":
        return ()
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer widths such as 8,8; got {text!r}"
        )
    return tuple(int(p) for p in parts)


def register(subparsers: Any) -> None:
    """Add ``train``, ``experiment`` and ``optimize`` to the ``dlserve`` subparsers."""
    from training import optimize_cli

    _register_train(subparsers)
    _register_experiment(subparsers)
    optimize_cli.register(subparsers)


def _register_train(subparsers: Any) -> None:
    presets = ", ".join(PRESETS)
    p = add_command(
        subparsers,
        "train",
        _train,
        epilog=(
            f"presets: {presets}. Examples: dlserve train --preset mlp-circle; "
            "dlserve train --all-presets --fresh; "
            "dlserve train --name my-spiral --dataset spiral --model mlp --hidden 16,16 "
            "--activation tanh --epochs 500"
        ),
    )
    what = p.add_argument_group("what to train (a preset, or --name/--dataset/--model)")
    what.add_argument("--preset", choices=list(PRESETS), help="one of the five default models")
    what.add_argument(
        "--all-presets",
        action="store_true",
        help="train all five presets, each as defined (make models: with --fresh)",
    )
    what.add_argument(
        "--name", help="model name (folder under the repository); default: the preset's name"
    )
    what.add_argument("--dataset", choices=DATASETS, help="data set")
    what.add_argument("--model", choices=MODELS, help="perceptron (PLA), mlp or cnn (digits)")
    hp = p.add_argument_group("hyperparameters (override a preset's)")
    hp.add_argument(
        "--hidden", type=_hidden, metavar="W[,W...]", help="MLP hidden widths, e.g. 8,8"
    )
    hp.add_argument("--activation", choices=ACTIVATIONS)
    hp.add_argument("--optimizer", choices=OPTIMIZERS)
    hp.add_argument("--lr", type=number(0.0, inclusive=False), metavar="X", help="learning rate")
    hp.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help="epochs (for the perceptron: the PLA's limit)",
    )
    hp.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        help="mini-batch size (default: full batch)",
    )
    hp.add_argument("--weight-decay", type=number(0.0, inclusive=True), metavar="W")
    hp.add_argument(
        "--label-smoothing",
        type=number(0.0, inclusive=True),
        metavar="E",
        help="cross-entropy label smoothing in [0, 1) (default 0.05: keeps logits small)",
    )
    hp.add_argument(
        "--seed", type=non_negative_int, metavar="S", help="random seed (data, init, order)"
    )
    hp.add_argument(
        "--samples",
        type=positive_int,
        dest="n_samples",
        metavar="N",
        help="2-D sets: points (default 1000)",
    )
    hp.add_argument(
        "--noise",
        type=number(0.0, inclusive=True),
        metavar="SD",
        help="2-D sets: noise (std of the jitter)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--repository", default="models", metavar="DIR", help="model repository (default: models)"
    )
    out.add_argument(
        "--runs-dir", default="runs", metavar="DIR", help="where reports go (default: runs)"
    )
    out.add_argument(
        "--fresh",
        action="store_true",
        help="replace the model folder with one holding only the new version 1",
    )
    out.add_argument(
        "--dry-run", action="store_true", help="train on one batch and stop (no export)"
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def _register_experiment(subparsers: Any) -> None:
    p = add_command(subparsers, "experiment", _experiment)
    p.add_argument("name", metavar="NAME", choices=EXPERIMENTS, help=", ".join(EXPERIMENTS))
    p.add_argument("--dataset", choices=DATASETS, help="data set (default: the experiment's)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="output folder (default: runs/experiments/NAME)")
    p.add_argument("--quick", action="store_true", help="fewer epochs and settings (smoke run)")


_OVERRIDES = (
    "hidden",
    "activation",
    "optimizer",
    "lr",
    "epochs",
    "batch_size",
    "weight_decay",
    "label_smoothing",
    "seed",
    "n_samples",
    "noise",
)


def _flag(dest: str) -> str:
    return "--samples" if dest == "n_samples" else "--" + dest.replace("_", "-")


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    """The `TrainConfig` of each run, in order (raises CliError when inconsistent)."""
    if args.fresh and args.dry_run:
        raise CliError("--dry-run exports nothing for --fresh to replace: drop one")
    if not args.all_presets:
        return [config_from_args(args)]
    given = [_flag(k) for k in ("preset", "name", "dataset", "model") if getattr(args, k)]
    given += [_flag(k) for k in _OVERRIDES if getattr(args, k) is not None]
    if given:
        raise CliError(f"--all-presets trains each preset as defined: drop {'/'.join(given)}")
    return list(PRESETS.values())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's `TrainConfig` from parsed arguments (raises CliError when inconsistent)."""
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    if args.preset:
        if args.dataset is not None or args.model is not None:
            raise CliError("--preset fixes the data set and model: drop --dataset/--model")
        cfg = replace(PRESETS[args.preset], **overrides)
        if args.name:
            cfg = replace(cfg, name=args.name)
    else:
        missing = [f"--{k}" for k in ("name", "dataset", "model") if not getattr(args, k)]
        if missing:
            raise CliError(
                f"missing {', '.join(missing)}: give --preset NAME or all of "
                "--name, --dataset and --model"
            )
        defaults: dict[str, Any] = {}
        if args.model == "perceptron":
            defaults.update(hidden=(), lr=1.0, epochs=100)
        elif args.model == "cnn":
            defaults.update(hidden=(), lr=0.002, epochs=15, batch_size=64)
        if args.dataset == "digits":
            defaults.update(max_batch_size=256)
        cfg = TrainConfig(
            name=args.name, dataset=args.dataset, model=args.model, **{**defaults, **overrides}
        )
    try:
        cfg.validate()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return cfg


def _train(args: argparse.Namespace) -> int:
    """train a preset or custom classifier and export it as a new model version

    Train a classifier and export it to ONNX as version N+1 of REPOSITORY/NAME (config.pbtxt and
    labels.txt are written too). The export is refused unless ONNX Runtime reproduces PyTorch's
    logits (max |delta| <= 1e-5, same argmax) on the held-out set. A report (metrics.json and
    PNG plots) goes to RUNS_DIR/NAME/vN/.
    """
    configs = configs_from_args(args)
    repository, runs_dir = Path(args.repository), Path(args.runs_dir)
    from training.repository import check_repository_writable, preflight

    if not args.dry_run:  # fail before the slow part (importing torch, training)
        for cfg in configs:
            if args.fresh:  # the model folder is replaced, whatever it holds
                check_repository_writable(repository)
            else:
                preflight(repository, cfg.name)
            check_repository_writable(runs_dir, cfg.name)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CliError(TRAIN_EXTRA_HINT) from None

    from training.export import ParityError
    from training.pipeline import run, run_fresh

    for cfg in configs:
        try:
            if args.fresh:
                run_fresh(
                    cfg, repository=repository, runs_dir=runs_dir, progress=not args.no_progress
                )
            else:
                run(
                    cfg,
                    repository=repository,
                    runs_dir=runs_dir,
                    dry_run=args.dry_run,
                    progress=not args.no_progress,
                )
        except ParityError as exc:
            raise CliError(str(exc), exit_code=1) from None
        except ValueError as exc:
            raise CliError(str(exc)) from None
    return 0


def _experiment(args: argparse.Namespace) -> int:
    """run one of the seed's experiments (PNG plots and a markdown report)

    Run one of the seed's experiments: PNG plots and a markdown report.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CliError(TRAIN_EXTRA_HINT) from None
    from training.experiments import run_experiment

    out = Path(args.out) if args.out else Path("runs") / "experiments" / args.name
    return int(
        run_experiment(args.name, dataset=args.dataset, seed=args.seed, out=out, quick=args.quick)
        or 0
    )
