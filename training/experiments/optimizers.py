"""Experiment `optimizers`: how SGD, momentum, RMSprop and Adam converge, and
what gradient descent does step by step.

Part 1 trains the same MLP (same initial weights, same mini-batches) on
spiral (or --dataset) with each optimizer at one learning rate and overlays
the loss and accuracy curves. Part 2 runs gradient descent by hand
(`gd_paths`): on f(x) = x² + 4x + 4 for several learning rates, and on a
2-D quadratic bowl with full-batch GD, SGD and mini-batch GD drawn on its
contour plot, each with its stopping criterion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training import datasets
from training.engine import OPTIMIZERS
from training.experiments import gd_paths, plots
from training.experiments._common import TARGET_ACC, epochs_to, finite, rounded, train_mlp
from training.experiments.report import Cell, ExperimentReport

DEFAULT_DATASET = "spiral"
FIGURE_MLP = "optimizers.png"
FIGURE_1D = "gd-1d.png"
FIGURE_2D = "gd-2d.png"


@dataclass(frozen=True)
class Settings:
    samples: int
    epochs: int
    hidden: tuple[int, ...] = (32, 32)
    activation: str = "relu"
    lr: float = 0.01
    batch_size: int = 32


QUICK = Settings(samples=400, epochs=100)
FULL = Settings(samples=1000, epochs=200)

# Gradient descent on f(x) = x² + 4x + 4: start, tolerance, learning rates.
X0_1D = 3.0
TOL_1D = 1e-4
LRS_1D = (0.02, 0.1, 0.8, 1.0, 1.05)
REFERENCE_LR_1D = 0.1  # the run the tests hold to |x + 2| < 1e-3
MAX_STEPS_1D = 1000

# The 2-D bowl: start, tolerances, and (method, batch size, learning rate).
W0_2D = (-1.5, 2.5)
GRAD_TOL_2D = 1e-3
LOSS_TOL_2D = 1e-5
MAX_EPOCHS_2D = 100
METHODS_2D = (("full-batch GD", None, 1.0), ("mini-batch GD", 16, 0.2), ("SGD", 1, 0.05))


def run(report: ExperimentReport, *, dataset: str | None, seed: int, quick: bool) -> None:
    _optimizers(report, dataset=dataset or DEFAULT_DATASET, seed=seed, quick=quick)
    _gd_1d(report)
    _gd_2d(report, seed=seed)


def _optimizers(report: ExperimentReport, *, dataset: str, seed: int, quick: bool) -> None:
    cfg = QUICK if quick else FULL
    split = datasets.load(dataset, n_samples=cfg.samples, seed=seed)
    histories = {
        name: train_mlp(
            split,
            hidden=cfg.hidden,
            activation=cfg.activation,
            optimizer=name,
            lr=cfg.lr,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            seed=seed,
        ).history
        for name in OPTIMIZERS
    }
    fig, axes = plots.figure(14, 5.2, ncols=2)
    plots.plot_curves(
        axes[0, 0],
        {k: h.train_loss for k, h in histories.items()},
        title="training loss",
        ylabel="cross-entropy (log scale)",
        yscale="log",
    )
    plots.plot_curves(
        axes[0, 1],
        {k: h.val_acc for k, h in histories.items()},
        title="validation accuracy",
        ylabel="accuracy",
    )
    axes[0, 1].axhline(TARGET_ACC, color="0.4", linestyle=":", linewidth=1)
    hidden = "×".join(str(h) for h in cfg.hidden)
    fig.suptitle(
        f"{dataset}: MLP {hidden} {cfg.activation}, every optimizer at lr={cfg.lr}, "
        f"batch {cfg.batch_size}, same initial weights (seed {seed})",
        fontsize="large",
    )
    size = plots.save(fig, report.out / FIGURE_MLP)

    rows = [
        [
            name,
            cfg.lr,
            rounded(finite(h.train_loss[-1]), 4),
            rounded(h.val_acc[-1], 4),
            epochs_to(h.val_acc),
        ]
        for name, h in histories.items()
    ]
    report.heading("Optimizers on one MLP")
    report.text(
        f"The same MLP ({hidden} hidden units, {cfg.activation}) is trained on {dataset} "
        f"({cfg.samples} points, 25 % held out) with each optimizer at learning rate "
        f"{cfg.lr}, mini-batches of {cfg.batch_size}, {cfg.epochs} epochs. Every run starts "
        "from the same weights and sees the same batches, so only the update rule differs. "
        "Momentum is SGD with momentum 0.9; RMSprop and Adam use PyTorch's defaults."
    )
    report.table(
        "optimizers",
        [
            "optimizer",
            "lr",
            "final train loss",
            "final val acc",
            f"epochs to {TARGET_ACC:.0%} val acc",
        ],
        rows,
    )
    report.image(FIGURE_MLP, size, "loss and accuracy per optimizer")
    report.results["optimizers_config"] = {"dataset": dataset, **cfg.__dict__}


def _gd_1d(report: ExperimentReport) -> None:
    runs = [gd_paths.descend_1d(lr, x0=X0_1D, tol=TOL_1D, max_steps=MAX_STEPS_1D) for lr in LRS_1D]
    fig, axes = plots.figure(14, 5.2, ncols=2)
    ax = axes[0, 0]
    xs = np.linspace(-9.5, 5.5, 400)
    ax.plot(xs, gd_paths.f_1d(xs), color="0.3", linewidth=1.5, label="f(x) = x² + 4x + 4")
    shown = {0.1: None, 0.8: None, 1.05: 3}  # lr -> steps drawn (None: all)
    for i, r in enumerate(runs):
        if r.lr not in shown:
            continue
        path = np.array(r.xs[: (shown[r.lr] or len(r.xs)) + 1])
        ax.plot(
            path,
            gd_paths.f_1d(path),
            "o-",
            color=plots.series_color(i),
            markersize=4,
            linewidth=1,
            alpha=0.85,
            label=f"lr {r.lr}: {r.stop}" + (f" (first {shown[r.lr]} steps)" if shown[r.lr] else ""),
        )
    ax.plot([X0_1D], [gd_paths.f_1d(X0_1D)], "ks", markersize=7, label=f"start x₀ = {X0_1D}")
    ax.axvline(gd_paths.X_MIN_1D, color="0.5", linestyle=":", linewidth=1)
    ax.set_ylim(-2, 50)
    ax.set_title("gradient descent x ← x − lr·f′(x) on f(x) = (x + 2)²")
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", framealpha=0.95)

    ax = axes[0, 1]
    for i, r in enumerate(runs):
        steps = np.arange(len(r.grads))
        ax.plot(
            steps,
            r.grads,
            color=plots.series_color(i),
            linewidth=1.5,
            label=f"lr {r.lr}: {r.steps} steps, {r.stop}",
        )
        ax.plot(steps[-1:], r.grads[-1:], "x", color=plots.series_color(i), markersize=9)
    ax.axhline(TOL_1D, color="k", linestyle="--", linewidth=1)
    ax.text(150, TOL_1D * 1.6, f"stop when |f′(x)| < tol = {TOL_1D:g}", ha="center")
    ax.set_yscale("log")
    ax.set_xlim(0, 300)
    ax.set_ylim(TOL_1D / 10, 1e5)
    ax.set_title("|f′(x)| per step (× = where the run stopped)")
    ax.set_xlabel("step")
    ax.set_ylabel("|f′(x)| (log scale)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper right")
    size = plots.save(fig, report.out / FIGURE_1D)

    report.heading("Gradient descent on f(x) = x² + 4x + 4")
    report.text(
        f"f(x) = (x + 2)² has its minimum at x = −2 and f′(x) = 2x + 4. Starting at "
        f"x₀ = {X0_1D}, each step is x ← x − lr·f′(x), so the distance to −2 is multiplied "
        f"by |1 − 2·lr|: below lr = 0.5 the iterates slide down one side, between 0.5 and 1 "
        f"they jump across the minimum and still converge, at lr = 1 they bounce between two "
        f"points for ever and above 1 they diverge. Stopping criterion: |f′(x)| < {TOL_1D:g} "
        f"(then |x + 2| < {TOL_1D / 2:g}); otherwise stop when |x| > 10⁴ (diverged) or "
        f"after {MAX_STEPS_1D} steps."
    )
    report.table(
        "gd_1d",
        ["lr", "steps", "final x", "|x + 2|", "stopped because"],
        [
            [r.lr, r.steps, rounded(r.final_x, 8), rounded(abs(r.final_x + 2), 8), r.stop]
            for r in runs
        ],
    )
    report.image(FIGURE_1D, size, "gradient-descent paths on x² + 4x + 4")
    reference = next(r for r in runs if r.lr == REFERENCE_LR_1D)
    report.results["gd_1d"] = {
        "x0": X0_1D,
        "tol": TOL_1D,
        "minimum": gd_paths.X_MIN_1D,
        "reference_lr": REFERENCE_LR_1D,
        "final_x": reference.final_x,
        "steps": reference.steps,
        "runs": [
            {"lr": r.lr, "steps": r.steps, "final_x": r.final_x, "stop": r.stop} for r in runs
        ],
    }


def _gd_2d(report: ExperimentReport, *, seed: int) -> None:
    bowl = gd_paths.make_bowl(seed)
    w_star = bowl.w_star
    loss_star = bowl.loss(w_star)
    runs = [
        gd_paths.descend_2d(
            bowl,
            method=method,
            batch_size=batch or bowl.n,
            lr=lr,
            w0=np.array(W0_2D),
            seed=seed,
            grad_tol=GRAD_TOL_2D,
            loss_tol=LOSS_TOL_2D,
            max_epochs=MAX_EPOCHS_2D,
        )
        for method, batch, lr in METHODS_2D
    ]
    fig, axes = plots.figure(15, 6.2, ncols=2, width_ratios=[1.15, 1])
    ax = axes[0, 0]
    all_w = np.concatenate([r.path for r in runs])
    lo = np.minimum(all_w.min(axis=0), w_star) - 0.4
    hi = np.maximum(all_w.max(axis=0), w_star) + 0.4
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 300))
    gap = bowl.loss_grid(g0, g1) - loss_star
    levels = np.geomspace(1e-3, max(gap.max(), 1e-2), 14)
    cs = ax.contour(g0, g1, gap, levels=levels, cmap="Greys_r", linewidths=0.8)
    ax.clabel(cs, cs.levels[::3], fmt="%.2g", fontsize="x-small")
    styles = {"full-batch GD": ("o-", 3.5, 1.6, 1.0), "mini-batch GD": ("-", 0, 1.2, 0.9)}
    for i, r in enumerate(runs):
        marker, ms, lw, alpha = styles.get(r.method, ("-", 0, 0.6, 0.7))
        ax.plot(
            r.path[:, 0],
            r.path[:, 1],
            marker,
            color=plots.series_color(i),
            markersize=ms,
            linewidth=lw,
            alpha=alpha,
            label=f"{r.method} (batch {r.batch_size}, lr {r.lr})",
        )
        ax.plot(*r.path[-1], "X", color=plots.series_color(i), markersize=10, markeredgecolor="k")
    ax.plot(*W0_2D, "ks", markersize=8, label="start")
    ax.plot(*w_star, "*", color="gold", markersize=16, markeredgecolor="k", label="minimum w*")
    ax.set_title("paths on the contours of L(w) − L(w*)  (X = where each run stopped)")
    ax.set_xlabel("w₁")
    ax.set_ylabel("w₂")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize="small", loc="upper right")

    ax = axes[0, 1]
    for i, r in enumerate(runs):
        ax.plot(
            r.epochs,
            np.maximum(r.losses - loss_star, 1e-12),
            color=plots.series_color(i),
            linewidth=1.2 if r.batch_size > 1 else 0.6,
            label=f"{r.method}: stopped at epoch {r.stop_epoch:g}, {r.stop}",
        )
        ax.plot(
            r.epochs[-1:],
            np.maximum(r.losses[-1:] - loss_star, 1e-12),
            "X",
            color=plots.series_color(i),
            markersize=10,
            markeredgecolor="k",
        )
    ax.set_yscale("log")
    ax.set_title("L(w) − L(w*) over the whole data set")
    ax.set_xlabel("epochs (examples seen / n)")
    ax.set_ylabel("loss above the minimum (log scale)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper right")
    ax.text(
        0.02,
        0.03,
        f"stopping criteria:\nfull batch: ‖∇L(w)‖ < {GRAD_TOL_2D:g}\n"
        f"SGD / mini-batch: |ΔL| over an epoch < {LOSS_TOL_2D:g}\n"
        f"(or {MAX_EPOCHS_2D} epochs)",
        transform=ax.transAxes,
        fontsize="small",
        va="bottom",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9},
    )
    fig.suptitle(
        f"A 2-D quadratic bowl: L(w) = ½·mean((x·w − t)²) over n = {bowl.n} examples (seed {seed})",
        fontsize="large",
    )
    size = plots.save(fig, report.out / FIGURE_2D)

    report.heading("Full-batch GD, SGD and mini-batch GD on a 2-D bowl")
    report.text(
        f"The loss of a two-weight linear model on {bowl.n} examples with correlated features, "
        "L(w) = ½·mean((x·w − t)²), is a tilted, elongated quadratic bowl with its minimum "
        f"at w* = ({w_star[0]:.4f}, {w_star[1]:.4f}). Full-batch GD uses the exact "
        "gradient and stops when ‖∇L(w)‖ < "
        f"{GRAD_TOL_2D:g}. SGD (one example per update) and mini-batch GD follow noisy "
        "estimates of it; with a constant learning rate they never see a zero gradient and "
        "jitter around w*, so they stop at the end of an epoch that changed the full loss "
        f"by less than {LOSS_TOL_2D:g}. Every run stops after {MAX_EPOCHS_2D} epochs at the "
        "latest. All start at "
        f"w = {W0_2D}."
    )
    rows: list[dict[str, Cell]] = [
        {
            "method": r.method,
            "batch size": r.batch_size,
            "lr": r.lr,
            "updates": r.updates,
            "epochs": r.stop_epoch,
            "‖w − w*‖ at the end": rounded(float(np.linalg.norm(r.path[-1] - w_star)), 6),
            "L(w) − L(w*) at the end": rounded(float(r.losses[-1] - loss_star), 8),
            "stopped because": r.stop,
        }
        for r in runs
    ]
    report.keyed_table("gd_2d", rows)
    report.image(FIGURE_2D, size, "GD, SGD and mini-batch paths on a quadratic bowl")
    report.results["gd_2d"] = {
        "w_star": [float(v) for v in w_star],
        "w0": list(W0_2D),
        "runs": [
            {
                "method": r.method,
                "batch_size": r.batch_size,
                "lr": r.lr,
                "updates": r.updates,
                "final_w": [float(v) for v in r.path[-1]],
                "stop": r.stop,
            }
            for r in runs
        ],
    }
