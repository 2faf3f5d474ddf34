"""Data sets: five synthetic 2-D sets and the 8x8 digits that scikit-learn ships.

Every generator is deterministic for a seed and returns *raw* features (not
normalised): input normalisation belongs to the model (see
`training.models.Normalize`) so that the exported ONNX graph takes the same raw
features a server client sends.

Arrays: ``X`` float32 ``[n, 2]`` (2-D sets) or ``[n, 1, 8, 8]`` (digits),
``y`` int64 ``[n]`` with class indices ``0..classes-1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.config import DATASETS, DATASETS_2D, TrainConfig

__all__ = [
    "DATASETS",
    "DATASETS_2D",
    "DEFAULT_NOISE",
    "LABELS",
    "Split",
    "load",
    "load_digits",
    "load_for",
    "make_2d",
    "train_val_split",
]

#: Default noise per 2-D set (standard deviation of the Gaussian jitter added
#: to the points, in feature units; the sets span roughly [-5, 5]).
DEFAULT_NOISE = {"linear": 0.0, "circle": 0.25, "xor": 0.25, "gaussian": 1.0, "spiral": 0.15}

#: Class names, index order (written to labels.txt by the exporter).
LABELS: dict[str, tuple[str, ...]] = {
    "linear": ("below", "above"),
    "circle": ("outside", "inside"),
    "xor": ("same-sign", "opposite-sign"),
    "gaussian": ("blob-a", "blob-b"),
    "spiral": ("spiral-a", "spiral-b"),
    "digits": tuple(str(d) for d in range(10)),
}


@dataclass(frozen=True)
class Split:
    """A train / held-out split of one data set, with its class names."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    labels: tuple[str, ...]

    @property
    def classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (no batch dimension): (2,) or (1, 8, 8)."""
        return tuple(int(d) for d in self.X_train.shape[1:])


def _halves(n_samples: int) -> tuple[int, int]:
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2, got {n_samples}")
    return n_samples // 2, n_samples - n_samples // 2


def _linear(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    # A line through (0.5, -0.3) at 30 degrees; points keep a margin of 0.5 from
    # it, so with noise 0 the classes are linearly separable (PLA converges).
    normal = np.array([-math.sin(math.radians(30)), math.cos(math.radians(30))])
    offset = float(normal @ np.array([0.5, -0.3]))
    margin = 0.5
    out = []
    for count, sign in ((n0, -1.0), (n1, 1.0)):
        pts = np.empty((0, 2))
        while len(pts) < count:
            cand = rng.uniform(-5.0, 5.0, size=(4 * count + 8, 2))
            dist = cand @ normal - offset
            pts = np.concatenate([pts, cand[sign * dist > margin]])
        out.append(pts[:count])
    return out


def _circle(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    # Class 1 ("inside"): radius in [0, 2.5]; class 0 ("outside"): radius in [3.5, 5].
    def ring(count: int, r_lo: float, r_hi: float) -> np.ndarray:
        r = rng.uniform(r_lo, r_hi, size=count)
        a = rng.uniform(0.0, 2 * math.pi, size=count)
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)

    return [ring(n0, 3.5, 5.0), ring(n1, 0.0, 2.5)]


def _xor(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    # Class 0: x*y > 0 (quadrants I, III); class 1: x*y < 0. Points keep 0.3
    # from the axes.
    def quadrants(count: int, same_sign: bool) -> np.ndarray:
        mag = rng.uniform(0.3, 5.0, size=(count, 2))
        sx = rng.choice([-1.0, 1.0], size=count)
        sy = sx if same_sign else -sx
        return mag * np.stack([sx, sy], axis=1)

    return [quadrants(n0, True), quadrants(n1, False)]


def _gaussian(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    # Two blobs; `noise` is their standard deviation (jitter is not added again).
    return [
        rng.normal((-2.0, -2.0), noise, size=(n0, 2)),
        rng.normal((2.0, 2.0), noise, size=(n1, 2)),
    ]


def _spiral(rng: np.random.Generator, n0: int, n1: int, noise: float) -> list[np.ndarray]:
    # Two interleaved arms, 1.75 turns each, radius growing to 5; arm 1 is arm 0
    # rotated by pi.
    def arm(count: int, delta: float) -> np.ndarray:
        t = np.linspace(0.0, 1.0, count, endpoint=False) + 0.5 / count
        r = 5.0 * t
        a = 1.75 * 2 * math.pi * t + delta
        return np.stack([r * np.sin(a), r * np.cos(a)], axis=1)

    return [arm(n0, 0.0), arm(n1, math.pi)]


_GENERATORS = {
    "linear": _linear,
    "circle": _circle,
    "xor": _xor,
    "gaussian": _gaussian,
    "spiral": _spiral,
}


def make_2d(
    name: str, n_samples: int = 1000, noise: float | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one 2-D data set: ``X`` float32 ``[n, 2]``, ``y`` int64 ``[n]``.

    Classes are balanced (``n // 2`` and ``n - n // 2``) and shuffled. ``noise``
    is the standard deviation of Gaussian jitter added to each point (for
    ``gaussian`` the blobs' standard deviation); ``None`` takes
    ``DEFAULT_NOISE[name]``. The same arguments always give the same arrays.
    """
    if name not in _GENERATORS:
        raise ValueError(f"unknown 2-D data set {name!r}; choose one of {', '.join(DATASETS_2D)}")
    noise = DEFAULT_NOISE[name] if noise is None else float(noise)
    if noise < 0 or not math.isfinite(noise):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    n0, n1 = _halves(int(n_samples))
    rng = np.random.default_rng(seed)
    parts = _GENERATORS[name](rng, n0, n1, noise)
    X = np.concatenate(parts)
    if noise > 0 and name != "gaussian":
        X = X + rng.normal(0.0, noise, size=X.shape)
    y = np.concatenate([np.zeros(n0, dtype=np.int64), np.ones(n1, dtype=np.int64)])
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order]


def train_val_split(
    X: np.ndarray, y: np.ndarray, val_fraction: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified split: returns ``(X_train, X_val, y_train, y_val)`` (sklearn's order)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    X_train, X_val, y_train, y_val = train_test_split(
        X, y, test_size=val_fraction, random_state=seed, stratify=y
    )
    return X_train, X_val, y_train, y_val


def load_digits(val_fraction: float = 0.25, seed: int = 0) -> Split:
    """The 1,797 8x8 handwritten digits scikit-learn ships, stratified held-out split.

    ``X`` is float32 ``[n, 1, 8, 8]`` with the raw pixel intensities 0..16.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    X = bunch.images.astype(np.float32)[:, None, :, :]  # [n, 1, 8, 8]
    y = bunch.target.astype(np.int64)
    X_train, X_val, y_train, y_val = train_val_split(X, y, val_fraction, seed)
    return Split("digits", X_train, y_train, X_val, y_val, LABELS["digits"])


def load(
    name: str,
    *,
    n_samples: int = 1000,
    noise: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.25,
) -> Split:
    """Any data set by name as a `Split` (``n_samples``/``noise`` apply to 2-D sets)."""
    if name == "digits":
        return load_digits(val_fraction, seed)
    X, y = make_2d(name, n_samples=n_samples, noise=noise, seed=seed)
    X_train, X_val, y_train, y_val = train_val_split(X, y, val_fraction, seed)
    return Split(name, X_train, y_train, X_val, y_val, LABELS[name])


def load_for(cfg: TrainConfig) -> Split:
    """The split ``cfg`` trains on (and a variant of its model is checked on)."""
    return load(
        cfg.dataset,
        n_samples=cfg.n_samples,
        noise=cfg.noise,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
    )
