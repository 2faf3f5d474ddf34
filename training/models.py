"""Models: the perceptron (trained with the perceptron learning algorithm), the
MLP, the digits CNN, and the pieces that make an exportable classifier.

A trained network returns logits. For export it is wrapped as
``Normalize -> network`` (so the ONNX graph takes raw features) and then
`Exportable` adds the ``probabilities`` output (softmax of the logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from training.config import ACTIVATIONS, MODELS

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "MLP",
    "DigitsCNN",
    "Exportable",
    "Normalize",
    "PerceptronResult",
    "activation_layer",
    "parameter_count",
    "train_perceptron",
    "with_normalization",
]


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name (relu|sigmoid|tanh|gelu)."""
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return table[name]()


class Normalize(nn.Module):
    """``(x - mean) / std`` with the statistics stored as buffers (exported with the graph)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    @classmethod
    def fit(cls, X: np.ndarray, per_feature: bool = True) -> Normalize:
        """Statistics of training data ``X`` ``[n, ...]``: per feature, or one scalar
        pair (images). A zero std becomes 1 so constant features pass through."""
        X = np.asarray(X, dtype=np.float64)
        if per_feature:
            mean, std = X.mean(axis=0), X.std(axis=0)
        else:
            mean, std = np.array(X.mean()), np.array(X.std())
        std = np.where(std > 1e-8, std, 1.0)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def with_normalization(
    model: nn.Module, X_train: np.ndarray, per_feature: bool = True
) -> nn.Sequential:
    """``Normalize`` fitted on ``X_train`` followed by ``model``: takes raw features."""
    return nn.Sequential(Normalize.fit(X_train, per_feature=per_feature), model)


class MLP(nn.Module):
    """Fully connected classifier: ``[n, in_features] -> [n, classes]`` logits.

    ``hidden`` lists the hidden layer widths (may be empty: a linear model).
    Inputs with more than two dimensions are flattened first (digits as an MLP).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        classes: int,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if in_features < 1 or classes < 2 or any(int(h) < 1 for h in hidden):
            raise ValueError(
                f"bad MLP sizes: in_features={in_features}, hidden={list(hidden)}, "
                f"classes={classes}"
            )
        activation_layer(activation)  # validate early
        self.activation = activation
        self.hidden = tuple(int(h) for h in hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), activation_layer(activation)]
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [n, classes]


class DigitsCNN(nn.Module):
    """Small CNN for 8x8 digits: ``[n, 1, 8, 8] -> [n, classes]`` logits.

    conv3x3(16) -> act -> conv3x3(32) -> act -> maxpool2 -> fc(64) -> act -> fc(classes)
    """

    def __init__(
        self, classes: int = 10, channels: tuple[int, int] = (16, 32), activation: str = "relu"
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, padding=1),  # [n, c1, 8, 8]
            activation_layer(activation),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),  # [n, c2, 8, 8]
            activation_layer(activation),
            nn.MaxPool2d(2),  # [n, c2, 4, 4]
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # [n, c2 * 16]
            nn.Linear(c2 * 16, 64),
            activation_layer(activation),
            nn.Linear(64, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class PerceptronResult:
    """Outcome of the perceptron learning algorithm (labels 0/1 as -1/+1).

    The decision rule is ``w . x + b > 0  ->  class 1``.
    """

    weight: np.ndarray  # [features] float64
    bias: float
    mistakes_per_epoch: list[int] = field(default_factory=list)
    converged: bool = False

    @property
    def epochs(self) -> int:
        return len(self.mistakes_per_epoch)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) @ self.weight + self.bias > 0).astype(np.int64)

    def to_module(self) -> nn.Linear:
        """A two-output linear layer with the same decision: logits ``[-s/2, s/2]``
        for the score ``s = w . x + b``, so softmax gives ``sigmoid(s)`` and argmax
        is class 1 exactly when ``s > 0``."""
        layer = nn.Linear(len(self.weight), 2)
        w = torch.as_tensor(self.weight, dtype=torch.float32)
        with torch.no_grad():
            layer.weight.copy_(torch.stack([-w / 2, w / 2]))
            layer.bias.copy_(torch.tensor([-self.bias / 2, self.bias / 2], dtype=torch.float32))
        return layer


def train_perceptron(
    X: np.ndarray, y: np.ndarray, max_epochs: int = 100, seed: int = 0, lr: float = 1.0
) -> PerceptronResult:
    """Rosenblatt's perceptron learning algorithm (mistake-driven, not gradient descent).

    Each epoch visits the samples in a seeded random order; a sample is a
    mistake when ``t * (w . x + b) <= 0`` with ``t = +1`` for class 1 and ``-1``
    for class 0, and then ``w += lr * t * x``, ``b += lr * t``. Stops after the
    first epoch without mistakes (``converged``) or after ``max_epochs``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be [n, features] matching y [n], got {X.shape} and {y.shape}")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError("the perceptron separates two classes: labels must be 0 or 1")
    t = np.where(y == 1, 1.0, -1.0)
    w = np.zeros(X.shape[1])
    b = 0.0
    rng = np.random.default_rng(seed)
    result = PerceptronResult(weight=w, bias=b)
    for _ in range(max_epochs):
        mistakes = 0
        for i in rng.permutation(len(X)):
            if t[i] * (X[i] @ w + b) <= 0:
                w = w + lr * t[i] * X[i]
                b = b + lr * t[i]
                mistakes += 1
        result.mistakes_per_epoch.append(mistakes)
        if mistakes == 0:
            result.converged = True
            break
    result.weight, result.bias = w, float(b)
    return result


class Exportable(nn.Module):
    """What goes into the ONNX file: ``input -> (logits, probabilities)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)  # [n, classes]
        return logits, torch.softmax(logits, dim=1)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (buffers such as normalisation statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
