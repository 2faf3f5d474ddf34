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
from dataclasses import dataclass
from pathlib import Path

from training.errors import ExperimentError
from training.experiments.report import ExperimentReport, prepare_out

#: The 2-D data sets (as in `training.datasets.DATASETS_2D`, repeated here so
#: that a bad --dataset is refused before numpy and torch load).
PLANE = ("linear", "circle", "xor", "gaussian", "spiral")


@dataclass(frozen=True)
class Experiment:
    """One experiment: `module` (in this package) has `run(report, *, dataset,
    seed, quick)`, which adds its tables and figures to the report."""

    module: str
    title: str
    datasets: tuple[str, ...] = PLANE
    datasets_why: str = ""


EXPERIMENTS = {
    "activations": Experiment("activations", "Activation functions in one hidden layer"),
    "perceptron-limits": Experiment(
        "perceptron_limits",
        "What a perceptron cannot learn",
        datasets=("xor", "circle", "spiral"),
        datasets_why="it picks the data set no line separates; "
        "a line (nearly) separates linear and gaussian",
    ),
    "optimizers": Experiment("optimizers", "Optimizers and gradient-descent paths"),
    "sensitivity": Experiment("sensitivity", "Learning rate × batch size"),
}
NAMES = tuple(EXPERIMENTS)


def check_dataset(name: str, dataset: str | None) -> None:
    """Refuse a --dataset that experiment `name` cannot use, saying why."""
    allowed = EXPERIMENTS[name].datasets
    if dataset is None or dataset in allowed:
        return
    if dataset in PLANE:
        why = EXPERIMENTS[name].datasets_why
        raise ExperimentError(
            f"--dataset {dataset} does not fit experiment {name}"
            + (f" ({why})" if why else "")
            + f"; choose one of {', '.join(allowed)}"
        )
    if dataset == "digits":
        raise ExperimentError(
            f"experiment {name} draws decision boundaries in the plane and needs a "
            f"2-D data set; choose --dataset from {', '.join(allowed)}"
        )
    raise ExperimentError(f"unknown --dataset {dataset!r}; choose one of {', '.join(allowed)}")


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
        raise ExperimentError(f"unknown experiment {name!r}; choose one of {', '.join(NAMES)}")
    if seed < 0:
        raise ExperimentError(f"--seed must be >= 0, got {seed}")
    check_dataset(name, dataset)
    out = prepare_out(Path(out))
    # Heavy imports (torch, matplotlib) only now, after the cheap checks.
    from training.experiments._common import torch_threads

    spec = EXPERIMENTS[name]
    module = importlib.import_module(f"{__name__}.{spec.module}")
    report = ExperimentReport(
        name=name,
        title=spec.title,
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


__all__ = ["EXPERIMENTS", "NAMES", "Experiment", "check_dataset", "run_experiment"]
