"""Experiment `activations`: one hidden layer, four non-linearities.

The same one-hidden-layer network is trained with ReLU, sigmoid, tanh and
GELU on circle, XOR and spiral (or the one --dataset). Output: loss curves
overlaid and the decision boundaries side by side (one row per data set),
and a table of final validation accuracy and the first epoch that reached
95 %.
"""

from __future__ import annotations

from dataclasses import dataclass

from training import datasets
from training.experiments import plots
from training.experiments._common import (
    TARGET_ACC,
    epochs_to,
    rounded,
    train_mlp,
)
from training.experiments.report import ExperimentReport
from training.models import ACTIVATIONS

DEFAULT_DATASETS = ("circle", "xor", "spiral")
FIGURE = "activations.png"


@dataclass(frozen=True)
class Settings:
    samples: int
    hidden: int
    epochs: int
    lr: float = 0.03
    optimizer: str = "adam"


QUICK = Settings(samples=400, hidden=32, epochs=200)
FULL = Settings(samples=1000, hidden=64, epochs=500)


def run(report: ExperimentReport, *, dataset: str | None, seed: int, quick: bool) -> None:
    cfg = QUICK if quick else FULL
    names = (dataset,) if dataset else DEFAULT_DATASETS

    fig, axes = plots.figure(
        4.0 * (1 + len(ACTIVATIONS)), 4.2 * len(names), nrows=len(names), ncols=1 + len(ACTIVATIONS)
    )
    rows = []
    for r, name in enumerate(names):
        split = datasets.load(name, n_samples=cfg.samples, seed=seed)
        losses = {}
        for c, act in enumerate(ACTIVATIONS):
            trained = train_mlp(
                split,
                hidden=[cfg.hidden],
                activation=act,
                optimizer=cfg.optimizer,
                lr=cfg.lr,
                epochs=cfg.epochs,
                seed=seed,
            )
            h = trained.history
            reached = epochs_to(h.val_acc)
            losses[act] = h.train_loss
            rows.append(
                [name, act, rounded(h.val_acc[-1], 4), rounded(h.train_loss[-1], 4), reached]
            )
            plots.plot_decision_boundary(
                axes[r, 1 + c],
                trained.predict_proba,
                split.X_val,
                split.y_val,
                labels=split.labels,
                legend=c == 0,
                title=f"{name} · {act}\nval acc {h.val_acc[-1]:.3f}, "
                + (f"≥95% at epoch {reached}" if reached else "never ≥95%"),
            )
        plots.plot_curves(
            axes[r, 0],
            losses,
            title=f"{name}: training loss",
            ylabel="cross-entropy (log scale)",
            yscale="log",
        )
    fig.suptitle(
        f"One hidden layer of {cfg.hidden} units, {cfg.optimizer} lr={cfg.lr}, full batch, "
        f"{cfg.epochs} epochs (held-out points shown; seed {seed})",
        fontsize="large",
    )
    size = plots.save(fig, report.out / FIGURE)

    report.text(
        f"A network with one hidden layer of {cfg.hidden} units is trained with each "
        f"activation ({', '.join(ACTIVATIONS)}) on {', '.join(names)} "
        f"({cfg.samples} points, 25 % held out), {cfg.optimizer} at learning rate {cfg.lr}, "
        f"full batch, {cfg.epochs} epochs, the same initial seed for every run. The "
        "table gives the validation accuracy after the last epoch and the first epoch "
        f"at which validation accuracy reached {TARGET_ACC:.0%} (— if never)."
    )
    headers = [
        "data set",
        "activation",
        "final val acc",
        "final train loss",
        f"epochs to {TARGET_ACC:.0%} val acc",
    ]
    report.table("runs", headers, rows)
    report.image(FIGURE, size, "training loss per activation and decision boundaries")
    report.results["config"] = {"datasets": list(names), **cfg.__dict__}
