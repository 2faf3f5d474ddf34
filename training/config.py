"""`TrainConfig`: everything one `dlserve train` run needs, saved in its report.

This module imports no torch: the CLI builds and validates configs before it
decides to load PyTorch.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

DATASETS_2D = ("linear", "circle", "xor", "gaussian", "spiral")
DATASETS = (*DATASETS_2D, "digits")
MODELS = ("perceptron", "mlp", "cnn")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu")
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")

#: The `training.engine.fit` keywords a config decides, each its field of the same name.
FIT_FIELDS = ("optimizer", "lr", "epochs", "batch_size", "weight_decay", "seed", "label_smoothing")

#: The fields that decide a run's training and held-out data (`training.datasets.load_for`).
DATA_FIELDS = ("dataset", "seed", "n_samples", "noise", "val_fraction")

#: Model names become folder names under the repository (and Triton model names).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``epochs`` is the PLA's epoch limit for the perceptron."""

    name: str
    dataset: str
    model: str
    hidden: tuple[int, ...] = (8, 8)
    activation: str = "relu"
    optimizer: str = "adam"
    lr: float = 0.01
    epochs: int = 200
    batch_size: int | None = None  # None: full batch
    seed: int = 0
    weight_decay: float = 0.0
    # Keeps logits small, so ONNX Runtime vs PyTorch rounding stays far below the
    # 1e-5 parity bound (see training.presets). Not used by the perceptron.
    label_smoothing: float = 0.05
    n_samples: int = 1000  # 2-D sets only
    noise: float | None = None  # 2-D sets only; None: the data set's default
    val_fraction: float = 0.25
    max_batch_size: int = 1024  # written to config.pbtxt
    preset: str | None = None

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for an inconsistent config."""
        if not _NAME_RE.match(self.name) or self.name in (".", ".."):
            raise ValueError(
                f"model name {self.name!r} must be 1-128 characters of letters, digits, "
                "'-', '_' or '.', starting with a letter or digit"
            )
        if self.name.isdigit():
            raise ValueError(f"model name {self.name!r} must not be all digits")
        if self.dataset not in DATASETS:
            raise ValueError(
                f"unknown data set {self.dataset!r}; choose one of {', '.join(DATASETS)}"
            )
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.model == "cnn" and self.dataset != "digits":
            raise ValueError("--model cnn needs --dataset digits (it takes 8x8 images)")
        if self.model == "perceptron" and self.dataset == "digits":
            raise ValueError(
                "--model perceptron separates two classes; digits has ten (use mlp or cnn)"
            )
        if self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be a positive integer, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"learning rate must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight decay must be a number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {list(self.hidden)}")
        if self.n_samples < 8:
            raise ValueError(f"the data set needs at least 8 samples, got {self.n_samples}")
        if self.noise is not None and not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a number >= 0, got {self.noise}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_batch_size < 1:
            raise ValueError(f"max batch size must be positive, got {self.max_batch_size}")

    def fit_kwargs(self) -> dict[str, Any]:
        """The keywords of `training.engine.fit` this run trains with (`FIT_FIELDS`)."""
        return {name: getattr(self, name) for name in FIT_FIELDS}

    def data_fields(self) -> dict[str, Any]:
        """Which data this run trains and is checked on (`DATA_FIELDS`)."""
        return {name: getattr(self, name) for name in DATA_FIELDS}

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d
