"""Experiment `sensitivity`: learning rate × batch size → validation accuracy.

One MLP is trained with plain SGD for a fixed number of epochs at every
combination of learning rate and batch size on circle (or --dataset). A
fixed epoch budget means a smaller batch takes more (noisier) steps, so good
runs lie on a diagonal band: small batches want small learning rates, large
batches need large ones, and too large a rate fails at any batch size.
Output: an annotated heatmap and a table with one row per configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from training import datasets
from training.experiments import plots
from training.experiments._common import finite, rounded, train_mlp
from training.experiments.report import ExperimentReport

DEFAULT_DATASET = "circle"
FIGURE = "sensitivity.png"
FULL_BATCH = None  # batch size None = the whole training set


@dataclass(frozen=True)
class Settings:
    samples: int
    lrs: tuple[float, ...]
    batch_sizes: tuple[int | None, ...]
    epochs: int = 30
    hidden: tuple[int, ...] = (16, 16)
    activation: str = "relu"
    optimizer: str = "sgd"


QUICK = Settings(samples=400, lrs=(0.003, 0.03, 0.3, 3.0), batch_sizes=(8, 32, 128, FULL_BATCH))
FULL = Settings(
    samples=1000,
    lrs=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
    batch_sizes=(4, 8, 16, 32, 64, 128, 256, FULL_BATCH),
)


def run(report: ExperimentReport, *, dataset: str | None, seed: int, quick: bool) -> None:
    cfg = QUICK if quick else FULL
    name = dataset or DEFAULT_DATASET
    split = datasets.load(name, n_samples=cfg.samples, seed=seed)
    n_train = len(split.y_train)

    # Everything but the grid's two axes (learning rate, batch size) is fixed.
    train = partial(
        train_mlp,
        split,
        hidden=cfg.hidden,
        activation=cfg.activation,
        optimizer=cfg.optimizer,
        epochs=cfg.epochs,
        seed=seed,
    )
    acc = np.zeros((len(cfg.lrs), len(cfg.batch_sizes)))
    rows = []
    for i, lr in enumerate(cfg.lrs):
        for j, batch in enumerate(cfg.batch_sizes):
            h = train(lr=lr, batch_size=batch).history
            size = n_train if batch is None else min(batch, n_train)
            updates = cfg.epochs * -(-n_train // size)
            acc[i, j] = h.val_acc[-1]
            rows.append(
                [
                    lr,
                    size,
                    updates,
                    rounded(finite(h.train_loss[-1]), 4),
                    rounded(h.val_acc[-1], 4),
                ]
            )

    col_labels = [f"full ({n_train})" if b is None else str(b) for b in cfg.batch_sizes]
    fig, axes = plots.figure(2.0 + 1.15 * len(col_labels), 1.6 + 0.6 * len(cfg.lrs))
    hidden = "×".join(str(h) for h in cfg.hidden)
    plots.plot_heatmap(
        axes[0, 0],
        acc,
        row_labels=[f"{lr:g}" for lr in cfg.lrs],
        col_labels=col_labels,
        title=f"{name}: validation accuracy after {cfg.epochs} epochs\n"
        f"MLP {hidden} {cfg.activation}, plain {cfg.optimizer.upper()} (seed {seed})",
        xlabel="batch size",
        ylabel="learning rate",
        colorbar_label="validation accuracy (0.5 = chance)",
        vmin=0.5,
    )
    size_px = plots.save(fig, report.out / FIGURE)

    report.text(
        f"An MLP ({hidden} hidden units, {cfg.activation}) is trained on {name} "
        f"({cfg.samples} points, 25 % held out) with plain {cfg.optimizer.upper()} for "
        f"{cfg.epochs} epochs at every combination of learning rate "
        f"({', '.join(f'{lr:g}' for lr in cfg.lrs)}) and batch size "
        f"({', '.join(col_labels)}), from the same initial weights. With a fixed number of "
        "epochs a smaller batch makes more updates, each noisier; the heatmap shows which "
        "combinations reach a good validation accuracy. *updates* is the number of optimizer "
        "steps; a final train loss of — means training blew up (NaN or infinite loss)."
    )
    report.table(
        "grid",
        ["learning rate", "batch size", "updates", "final train loss", "final val acc"],
        rows,
    )
    report.image(FIGURE, size_px, "validation accuracy heatmap over learning rate × batch size")
    report.results["config"] = {
        "dataset": name,
        **{k: v for k, v in cfg.__dict__.items() if k != "batch_sizes"},
        "batch_sizes": [n_train if b is None else b for b in cfg.batch_sizes],
    }
    report.results["val_acc"] = [[rounded(v, 4) for v in row] for row in acc]
