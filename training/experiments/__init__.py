"""`dlserve experiment NAME`: the seed's teaching experiments, one command each.

| name | shows |
| --- | --- |
| `activations` | ReLU, sigmoid, tanh, GELU in one hidden layer on circle, XOR, spiral |
| `perceptron-limits` | the perceptron learns linear data but never XOR; an MLP does |
| `optimizers` | SGD, momentum, RMSprop, Adam on one MLP; gradient-descent paths |
| `sensitivity` | learning rate x batch size -> validation accuracy heatmap |

Each writes PNGs, `report.md` (the tables) and `results.json` (the same
numbers, for scripts and tests) into the output folder and prints where.
Results are deterministic for a seed. Importing this package is cheap; torch
and matplotlib load when an experiment runs.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from dlserve.errors import CliError

#: Experiment name -> (module in this package, title). Each module has
#: `DATASETS` (the --dataset values it accepts) and `run(report, *, dataset,
#: seed, quick)`, which adds its tables and figures to the report.
EXPERIMENTS = {
    "activations": ("activations", "Activation functions in one hidden layer"),
    "perceptron-limits": ("perceptron_limits", "What a perceptron cannot learn"),
    "optimizers": ("optimizers", "Optimizers and gradient-descent paths"),
    "sensitivity": ("sensitivity", "Learning rate × batch size"),
}
NAMES = tuple(EXPERIMENTS)


def command_line(name: str, *, dataset: str | None, seed: int, quick: bool) -> str:
    parts = ["dlserve", "experiment", name]
    if dataset:
        parts += ["--dataset", dataset]
    parts += ["--seed", str(seed)]
    if quick:
        parts.append("--quick")
    return " ".join(parts)


def run_experiment(name: str, *, dataset: str | None, seed: int, out: Path, quick: bool) -> int:
    """Run one experiment into `out`; print what was written; return the exit code."""
    if name not in EXPERIMENTS:
        raise CliError(f"unknown experiment {name!r}; choose one of {', '.join(NAMES)}")
    if seed < 0:
        raise CliError(f"--seed must be >= 0, got {seed}")
    module_name, title = EXPERIMENTS[name]
    # Heavy imports (torch, matplotlib) only now, after the cheap checks.
    from training.experiments._common import check_dataset, torch_threads
    from training.experiments.report import ExperimentReport, prepare_out

    module = importlib.import_module(f"{__name__}.{module_name}")
    check_dataset(name, dataset, module.DATASETS, getattr(module, "DATASETS_WHY", ""))
    out = prepare_out(Path(out))
    report = ExperimentReport(
        name=name,
        title=title,
        out=out,
        seed=seed,
        quick=quick,
        command=command_line(name, dataset=dataset, seed=seed, quick=quick),
    )
    with torch_threads(1):
        module.run(report, dataset=dataset, seed=seed, quick=quick)
    files = report.write()
    print(f"experiment {name}: wrote {len(files)} files to {out}")
    for path in files:
        print(f"  {path}")
    return 0


__all__ = ["EXPERIMENTS", "NAMES", "run_experiment"]
