"""Experiment `perceptron-limits`: a line cannot separate XOR; a hidden layer can.

The perceptron learning algorithm (Rosenblatt's mistake-driven rule) runs on
linearly separable data, where it stops after an epoch without mistakes, and
on XOR (or the --dataset given), where no line separates the classes and
every epoch keeps making mistakes until the epoch budget runs out. Next to
it, an MLP with one hidden layer learns XOR. Output: mistakes per epoch, the
three decision boundaries, and a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training import datasets
from training.experiments import plots
from training.experiments._common import TARGET_ACC, epochs_to, rounded, train_mlp
from training.experiments.report import Cell, ExperimentReport
from training.models import PerceptronResult, train_perceptron

#: --dataset replaces XOR as the set no line separates (see `EXPERIMENTS`).
DEFAULT_HARD = "xor"
SEPARABLE = "linear"
FIGURE = "perceptron-limits.png"


@dataclass(frozen=True)
class Settings:
    samples: int
    pla_epochs: int
    hidden: int
    epochs: int
    activation: str = "relu"
    optimizer: str = "adam"
    lr: float = 0.03


QUICK = Settings(samples=400, pla_epochs=50, hidden=32, epochs=200)
FULL = Settings(samples=1000, pla_epochs=100, hidden=64, epochs=500)


def _pla_proba(result: PerceptronResult) -> plots.PredictProba:
    """P(class 1) = sigmoid(w·x + b), for shading; the boundary is w·x + b = 0."""

    def proba(X: np.ndarray) -> np.ndarray:
        score = np.clip(np.asarray(X, dtype=np.float64) @ result.weight + result.bias, -50, 50)
        p1 = 1.0 / (1.0 + np.exp(-score))
        return np.stack([1.0 - p1, p1], axis=1)

    return proba


def _accuracy(result: PerceptronResult, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(result.predict(X) == y))


def run(report: ExperimentReport, *, dataset: str | None, seed: int, quick: bool) -> None:
    cfg = QUICK if quick else FULL
    hard = dataset or DEFAULT_HARD
    splits = {
        name: datasets.load(name, n_samples=cfg.samples, seed=seed) for name in (SEPARABLE, hard)
    }
    pla = {
        name: train_perceptron(s.X_train, s.y_train, max_epochs=cfg.pla_epochs, seed=seed)
        for name, s in splits.items()
    }
    mlp = train_mlp(
        splits[hard],
        hidden=[cfg.hidden],
        activation=cfg.activation,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        epochs=cfg.epochs,
        seed=seed,
    )
    h = mlp.history

    fig, axes = plots.figure(20, 5.0, ncols=4)
    plots.plot_curves(
        axes[0, 0],
        {f"perceptron on {name}": r.mistakes_per_epoch for name, r in pla.items()},
        title="Perceptron learning algorithm:\nmistakes per epoch",
        ylabel="mistakes in the epoch (symlog scale)",
        yscale="symlog",
    )
    for ax, name in ((axes[0, 1], SEPARABLE), (axes[0, 2], hard)):
        r, s = pla[name], splits[name]
        verdict = (
            f"converged: no mistakes in epoch {r.epochs}"
            if r.converged
            else f"not converged: {r.mistakes_per_epoch[-1]} mistakes in epoch {r.epochs}"
        )
        plots.plot_decision_boundary(
            ax,
            _pla_proba(r),
            s.X_val,
            s.y_val,
            labels=s.labels,
            legend=True,
            title=f"Perceptron on {name}\n{verdict}\nval acc {_accuracy(r, s.X_val, s.y_val):.3f}",
        )
    plots.plot_decision_boundary(
        axes[0, 3],
        mlp.predict_proba,
        splits[hard].X_val,
        splits[hard].y_val,
        labels=splits[hard].labels,
        legend=True,
        title=f"MLP, one hidden layer of {cfg.hidden} {cfg.activation}, on {hard}\n"
        f"{cfg.optimizer}, {cfg.epochs} epochs\nval acc {h.val_acc[-1]:.3f}",
    )
    fig.suptitle(
        f"A perceptron draws one line; a hidden layer bends it (held-out points, seed {seed})",
        fontsize="large",
    )
    size = plots.save(fig, report.out / FIGURE)

    rows: list[dict[str, Cell]] = []
    for name, r in pla.items():
        s = splits[name]
        rows.append(
            {
                "model": "perceptron (PLA)",
                "data set": name,
                "epochs": r.epochs,
                "mistakes in last epoch": r.mistakes_per_epoch[-1],
                "converged": r.converged,
                "train acc": rounded(_accuracy(r, s.X_train, s.y_train), 4),
                "val acc": rounded(_accuracy(r, s.X_val, s.y_val), 4),
            }
        )
    reached = epochs_to(h.val_acc)
    rows.append(
        {
            "model": f"MLP [{cfg.hidden}] {cfg.activation}",
            "data set": hard,
            "epochs": h.epochs,
            "mistakes in last epoch": None,
            "converged": reached is not None,
            "train acc": rounded(h.train_acc[-1], 4),
            "val acc": rounded(h.val_acc[-1], 4),
        }
    )

    report.text(
        f"The perceptron learning algorithm visits the {len(splits[SEPARABLE].y_train)} "
        "training points once per epoch in a shuffled order and moves its line whenever "
        "a point is on the wrong side. On linearly separable data it stops after the first "
        f"epoch without a mistake; on {hard} no line separates the classes, so it keeps "
        f"making mistakes for all {cfg.pla_epochs} epochs. An MLP with one hidden layer of "
        f"{cfg.hidden} {cfg.activation} units ({cfg.optimizer}, lr {cfg.lr}, full batch, "
        f"{cfg.epochs} epochs) is trained on {hard}; for it, *converged* means validation "
        f"accuracy reached {TARGET_ACC:.0%}"
        + (f" (at epoch {reached})." if reached else " (it did not).")
    )
    report.keyed_table("runs", rows)
    report.image(FIGURE, size, "perceptron and MLP decision boundaries")
    report.results["perceptron"] = {
        name: {
            "mistakes_per_epoch": r.mistakes_per_epoch,
            "converged": r.converged,
            "final_mistakes": r.mistakes_per_epoch[-1],
            "weight": [rounded(w) for w in r.weight],
            "bias": rounded(r.bias),
        }
        for name, r in pla.items()
    }
    report.results["mlp"] = {
        "dataset": hard,
        "val_acc": rounded(h.val_acc[-1], 4),
        "train_acc": rounded(h.train_acc[-1], 4),
        "epochs_to_target": reached,
    }
    report.results["config"] = {"separable": SEPARABLE, "hard": hard, **cfg.__dict__}
