"""Matplotlib helpers shared by the experiments (Agg backend, no display).

Figures have a fixed size in inches and a fixed DPI and are saved without
`bbox_inches="tight"`, so every PNG has a known pixel size that the report
records and the tests check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 100
#: Points of class 0 / 1 / 2 ... and the matching (lighter) region colours.
POINT_COLORS = ["#08306b", "#a50f15", "#00441b", "#7f2704", "#3f007d"]
REGION_COLORS = ["#aec7e8", "#ff9896", "#98df8a", "#ffbb78", "#c5b0d5"]

PredictProba = Callable[[np.ndarray], np.ndarray]


def series_color(index: int) -> str:
    """The matplotlib default colour cycle, so a label keeps its colour across panels."""
    return f"C{index % 10}"


def figure(
    width_in: float,
    height_in: float,
    nrows: int = 1,
    ncols: int = 1,
    width_ratios: Sequence[float] | None = None,
) -> tuple[Figure, np.ndarray]:
    """A figure with constrained layout and a 2-D array of axes."""
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width_in, height_in),
        dpi=DPI,
        squeeze=False,
        layout="constrained",
        width_ratios=width_ratios,
    )
    return fig, axes


def save(fig: Figure, path: Path) -> tuple[int, int]:
    """Save as PNG (no timestamp metadata) and close; return (width, height) in px."""
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    width, height = (fig.get_size_inches() * DPI).round().astype(int)
    plt.close(fig)
    return int(width), int(height)


def plot_curves(
    ax: Axes,
    curves: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str = "epoch",
    ylabel: str = "loss",
    yscale: str = "linear",
    styles: Mapping[str, str] | None = None,
) -> None:
    """Overlaid curves, one per label, x = 1..len(curve).

    `yscale` "log" for losses; "symlog" when a curve reaches exactly 0.
    """
    for i, (label, values) in enumerate(curves.items()):
        xs = np.arange(1, len(values) + 1)
        ax.plot(
            xs,
            values,
            label=label,
            color=series_color(i),
            linestyle=(styles or {}).get(label, "-"),
            linewidth=1.8,
        )
    if yscale == "symlog":
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0)
    elif yscale != "linear":
        ax.set_yscale(yscale)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _grid(X: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = 0.1 * (hi - lo)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], resolution)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], resolution)
    gx, gy = np.meshgrid(xs, ys)
    return gx, gy, np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def plot_decision_boundary(
    ax: Axes,
    predict_proba: PredictProba,
    X: np.ndarray,
    y: np.ndarray,
    *,
    title: str,
    resolution: int = 200,
    labels: Sequence[str] | None = None,
    legend: bool = False,
) -> None:
    """Shade the plane by predicted class, draw the boundary, scatter the points.

    `predict_proba` maps float32 [m, 2] to class probabilities [m, classes].
    Two classes: the shade is P(class 1) and the line is where it is 0.5.
    """
    gx, gy, points = _grid(X, resolution)
    probs = np.asarray(predict_proba(points))
    classes = max(int(y.max()) + 1, probs.shape[1])
    if probs.shape[1] == 2:
        p1 = probs[:, 1].reshape(gx.shape)
        cmap = ListedColormap(plt.get_cmap("RdBu_r")(np.linspace(0.25, 0.75, 256)))
        ax.contourf(gx, gy, p1, levels=np.linspace(0, 1, 11), cmap=cmap, alpha=0.7)
        ax.contour(gx, gy, p1, levels=[0.5], colors="k", linewidths=1.5)
    else:
        regions = probs.argmax(axis=1).reshape(gx.shape)
        ax.contourf(
            gx,
            gy,
            regions,
            levels=np.arange(-0.5, classes),
            colors=REGION_COLORS[:classes],
            alpha=0.8,
        )
    for c in range(classes):
        mask = y == c
        ax.scatter(
            X[mask, 0],
            X[mask, 1],
            s=16,
            color=POINT_COLORS[c % len(POINT_COLORS)],
            edgecolors="white",
            linewidths=0.5,
            label=labels[c] if labels and c < len(labels) else f"class {c}",
        )
    if legend:
        ax.legend(loc="upper right", fontsize="small", framealpha=0.85)
    ax.set_title(title, fontsize="medium")
    ax.set_xlim(gx.min(), gx.max())
    ax.set_ylim(gy.min(), gy.max())
    ax.set_aspect("equal", adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_heatmap(
    ax: Axes,
    values: np.ndarray,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar_label: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
    fmt: str = "{:.2f}",
) -> None:
    """An annotated heatmap; rows are drawn top to bottom in the given order."""
    im = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    mid = (vmin + vmax) / 2
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize="medium",
                color="black" if v > mid else "white",
            )
    ax.figure.colorbar(im, ax=ax, label=colorbar_label)
