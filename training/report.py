"""The training report: ``metrics.json`` and PNG plots, written to ``runs/<name>/v<N>/``.

Plots (matplotlib, Agg backend):
- ``loss.png``: train/validation loss and accuracy per epoch (for the
  perceptron: mistakes per PLA epoch);
- ``decision_boundary.png`` (2-D sets): the model's class-1 probability over the
  plane with the training and held-out points;
- ``gradients.png``: mean |gradient| of each layer's weights per epoch, as a
  heatmap on a log scale (not for the perceptron: PLA uses no gradients);
- ``confusion_matrix.png`` (digits): held-out confusion matrix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "plot_confusion_matrix",
    "plot_decision_boundary",
    "plot_gradients",
    "plot_loss",
    "plot_mistakes",
    "write_metrics",
]


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    os.replace(tmp, path)
    return path


def write_metrics(path: Path, metrics: dict[str, Any]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def plot_loss(
    path: Path,
    train_loss: Sequence[float],
    val_loss: Sequence[float],
    train_acc: Sequence[float],
    val_acc: Sequence[float],
    title: str,
) -> Path:
    plt = _pyplot()
    epochs = np.arange(1, len(train_loss) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, train_loss, label="train")
    ax_loss.plot(epochs, val_loss, label="held-out")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    if min(min(train_loss), min(val_loss)) > 0:
        ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.plot(epochs, np.asarray(train_acc) * 100, label="train")
    ax_acc.plot(epochs, np.asarray(val_acc) * 100, label="held-out")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    fig.suptitle(title)
    return _save(fig, path)


def plot_mistakes(path: Path, mistakes_per_epoch: Sequence[int], title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    epochs = np.arange(1, len(mistakes_per_epoch) + 1)
    ax.plot(epochs, mistakes_per_epoch, marker="o")
    ax.set_xlabel("epoch (one pass over the training set)")
    ax.set_ylabel("mistakes (weight updates)")
    ax.set_xticks(epochs if len(epochs) <= 20 else np.linspace(1, len(epochs), 10, dtype=int))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def plot_decision_boundary(
    path: Path,
    predict_proba: Callable[[np.ndarray], np.ndarray],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    labels: Sequence[str],
    title: str,
) -> Path:
    """``predict_proba`` maps raw ``[n, 2]`` features to probabilities ``[n, 2]``."""
    plt = _pyplot()
    X_all = np.concatenate([X_train, X_val])
    lo, hi = X_all.min(axis=0), X_all.max(axis=0)
    pad = 0.08 * (hi - lo)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 300)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 300)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    p1 = predict_proba(grid)[:, 1].reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    cf = ax.contourf(gx, gy, p1, levels=np.linspace(0, 1, 21), cmap="RdBu_r", alpha=0.75)
    ax.contour(gx, gy, p1, levels=[0.5], colors="k", linewidths=1.2)
    colors = ["#1f4e9c", "#b2182b"]
    for cls in (0, 1):
        ax.scatter(
            *X_train[y_train == cls].T,
            s=10,
            c=colors[cls],
            edgecolors="white",
            linewidths=0.3,
            label=f"{labels[cls]} (train)",
        )
        ax.scatter(
            *X_val[y_val == cls].T,
            s=22,
            c=colors[cls],
            marker="^",
            edgecolors="black",
            linewidths=0.5,
            label=f"{labels[cls]} (held-out)",
        )
    fig.colorbar(cf, ax=ax, label=f"P({labels[1]})")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    ax.set_title(title)
    return _save(fig, path)


def plot_gradients(
    path: Path, grad_magnitude: Sequence[Sequence[float]], layer_names: Sequence[str], title: str
) -> Path:
    """Heatmap: layers (rows, input side at the top) x epochs, log10 mean |grad|."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    data = np.asarray(grad_magnitude, dtype=np.float64).T  # [layers, epochs]
    positive = data[data > 0]
    floor = positive.min() if positive.size else 1e-12
    data = np.where(data > 0, data, floor)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(layer_names) + 2.2))
    im = ax.imshow(
        data,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        norm=LogNorm(vmin=data.min(), vmax=data.max()),
        extent=(0.5, data.shape[1] + 0.5, len(layer_names) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(layer_names)))
    ax.set_yticklabels([f"{i + 1}: {n}" for i, n in enumerate(layer_names)], fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer (input → output)")
    fig.colorbar(im, ax=ax, label="mean |dL/dW| (log scale)")
    ax.set_title(title)
    return _save(fig, path)


def plot_confusion_matrix(
    path: Path, y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], title: str
) -> Path:
    plt = _pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(labels))),
        display_labels=list(labels),
        cmap="Blues",
        colorbar=False,
        ax=ax,
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)
