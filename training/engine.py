"""The training loop: `fit` a classifier with cross-entropy and record a `History`.

Deterministic on CPU for a seed: `fit` seeds torch and draws mini-batch order
from its own generator. Build the model after `seed_everything(seed)` so its
initial weights are deterministic too.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn

from training.config import OPTIMIZERS

__all__ = [
    "OPTIMIZERS",
    "History",
    "evaluate",
    "fit",
    "make_optimizer",
    "predict",
    "seed_everything",
]


@dataclass
class History:
    """Per-epoch metrics of one `fit` run (index i is epoch i + 1)."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    #: The layers with weights, in forward order (e.g. "Linear 2→8"; see `describe_layer`).
    layer_names: list[str] = field(default_factory=list)
    #: ``grad_magnitude[epoch][layer]``: mean |d loss / d weight| of that layer's
    #: weight, averaged over the epoch's steps.
    grad_magnitude: list[list[float]] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(
    name: str, params: object, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """sgd | momentum (SGD, 0.9) | rmsprop | adam."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)  # type: ignore[arg-type]
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)  # type: ignore[arg-type]
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)  # type: ignore[arg-type]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)  # type: ignore[arg-type]
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own a ``weight`` parameter (Linear, Conv), in registration order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.requires_grad
    ]


def describe_layer(module: nn.Module) -> str:
    """A short human name for a weighted layer, e.g. ``Linear 2→8``, ``Conv2d 1→16 3x3``."""
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}→{module.out_features}"
    if isinstance(module, nn.Conv2d):
        k = "x".join(str(d) for d in module.kernel_size)
        return f"Conv2d {module.in_channels}→{module.out_channels} {k}"
    return type(module).__name__


def _mean_abs_grad(module: nn.Module) -> float:
    weight = module.weight
    assert isinstance(weight, nn.Parameter)
    grad = weight.grad
    return float(grad.abs().mean().item()) if grad is not None else 0.0


def _as_tensors(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(np.asarray(X), dtype=torch.float32), torch.as_tensor(
        np.asarray(y), dtype=torch.int64
    )


@torch.no_grad()
def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(X, y)``."""
    model.eval()
    xt, yt = _as_tensors(X, y)
    logits = model(xt)  # [n, classes]
    loss = nn.functional.cross_entropy(logits, yt).item()
    acc = (logits.argmax(dim=1) == yt).float().mean().item()
    return float(loss), float(acc)


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray) -> np.ndarray:
    """Class indices ``[n]`` predicted by ``model``."""
    model.eval()
    return model(torch.as_tensor(np.asarray(X), dtype=torch.float32)).argmax(dim=1).numpy()


def fit(
    model: nn.Module,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    optimizer: str = "adam",
    lr: float = 0.01,
    epochs: int = 100,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    max_steps: int | None = None,
    label_smoothing: float = 0.0,
) -> History:
    """Train ``model`` (returns logits) with cross-entropy; returns the `History`.

    ``batch_size=None`` trains full-batch. Train loss/accuracy of an epoch are
    the means over its steps (measured before each update; the loss is plain
    cross-entropy even with label smoothing); validation is measured after the
    epoch. ``max_steps`` stops early after that many
    optimizer steps in total (``--dry-run`` uses 1). ``label_smoothing`` is
    passed to the cross-entropy (the presets use it to keep logits small).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    xt, yt = _as_tensors(X_train, y_train)
    n = len(yt)
    bs = n if batch_size is None else min(batch_size, n)
    layers = weighted_layers(model)
    hist = History(layer_names=[describe_layer(m) for _, m in layers])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    steps = 0
    started = time.perf_counter()

    bar = None
    epoch_iter: Iterable[int] = range(epochs)
    if progress:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (CI logs, subprocess tests)
        bar = tqdm(
            range(epochs), desc="train", unit="epoch", leave=False, dynamic_ncols=True, disable=None
        )
        epoch_iter = bar
    for _ in epoch_iter:
        model.train()
        order = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        loss_sum = correct = seen = 0.0
        grad_sum = np.zeros(len(layers))
        batches = 0
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            xb, yb = xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xb)  # [b, classes]
            loss = loss_fn(logits, yb)
            loss.backward()
            grad_sum += [_mean_abs_grad(m) for _, m in layers]
            opt.step()
            batches += 1
            # Record plain cross-entropy (no label smoothing) so that train and
            # validation losses measure the same thing.
            plain = (
                loss if label_smoothing == 0 else nn.functional.cross_entropy(logits.detach(), yb)
            )
            loss_sum += plain.item() * len(yb)
            correct += (logits.argmax(dim=1) == yb).sum().item()
            seen += len(yb)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        hist.train_loss.append(loss_sum / seen)
        hist.train_acc.append(correct / seen)
        hist.grad_magnitude.append((grad_sum / batches).tolist())
        vl, va = evaluate(model, X_val, y_val)
        hist.val_loss.append(vl)
        hist.val_acc.append(va)
        if bar is not None:
            bar.set_postfix(loss=f"{hist.train_loss[-1]:.4f}", val_acc=f"{va:.3f}")
        if max_steps is not None and steps >= max_steps:
            break
    if bar is not None:
        bar.close()
    hist.duration_s = time.perf_counter() - started
    return hist
