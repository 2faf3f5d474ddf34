"""Pieces the four experiments share: the torch set-up, one MLP training run,
and small helpers over a `History`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from training import datasets
from training.engine import History, fit, seed_everything
from training.models import MLP, with_normalization

#: Validation accuracy that counts as "solved" in the tables.
TARGET_ACC = 0.95


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Small models run fastest (and bit-for-bit repeatably) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Trained:
    """One trained MLP (raw features in, logits out) and its history."""

    model: nn.Module
    history: History

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            logits = self.model(torch.as_tensor(X, dtype=torch.float32))
            return torch.softmax(logits, dim=1).numpy()


def train_mlp(
    split: datasets.Split,
    *,
    hidden: Sequence[int],
    activation: str = "relu",
    optimizer: str = "adam",
    lr: float = 0.01,
    epochs: int = 100,
    batch_size: int | None = None,
    seed: int = 0,
) -> Trained:
    """Build (seeded) and fit `Normalize -> MLP` on a split, full-batch by default."""
    seed_everything(seed)
    model = with_normalization(
        MLP(split.input_shape[0], hidden, split.classes, activation), split.X_train
    )
    history = fit(
        model,
        split.X_train,
        split.y_train,
        split.X_val,
        split.y_val,
        optimizer=optimizer,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        progress=False,
    )
    return Trained(model, history)


def epochs_to(accuracies: Sequence[float], target: float = TARGET_ACC) -> int | None:
    """First epoch (1-based) whose accuracy reaches target, or None.

    Accuracies are float32 means (95/100 is 0.94999999), hence the tolerance.
    """
    return next((i + 1 for i, a in enumerate(accuracies) if a >= target - 1e-6), None)


def finite(value: float) -> float | None:
    """A loss for a table: None when training blew up (NaN or inf)."""
    return float(value) if np.isfinite(value) else None


def rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)
