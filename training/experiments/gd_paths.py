"""Gradient descent by hand (numpy only) on two quadratics.

1. f(x) = x² + 4x + 4 = (x + 2)², minimum at x = -2. Full-batch gradient
   descent x ← x - lr·f'(x) for a few learning rates; stop when
   |f'(x)| < tol (the stopping criterion), when x blows up, or after a
   step budget.
2. A 2-D quadratic bowl: the mean squared error of a two-weight linear model
   on a fixed data set, L(w) = ½·mean((X w - t)²). Its gradient is
   Xᵀ(Xw - t)/n, so full-batch GD, SGD (one example per step) and mini-batch
   GD (b examples per step) all minimise the same bowl, and their paths can be
   drawn on its contour plot. Full-batch GD stops when ‖∇L(w)‖ < tol; the
   stochastic methods never see a zero gradient with a constant learning
   rate, so they stop when an epoch improves the full loss by less than tol
   (or after an epoch budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# -- 1-D: f(x) = x² + 4x + 4 -------------------------------------------------

X_MIN_1D = -2.0


def f_1d(x: float | np.ndarray) -> float | np.ndarray:
    return x * x + 4 * x + 4


def grad_1d(x: float) -> float:
    return 2 * x + 4


@dataclass(frozen=True)
class Run1D:
    lr: float
    xs: list[float]  # x_0 .. x_k, the iterates
    grads: list[float]  # |f'(x_i)| for each iterate
    stop: str  # "|f'(x)| < tol" | "diverged" | "step budget"

    @property
    def steps(self) -> int:
        return len(self.xs) - 1

    @property
    def final_x(self) -> float:
        return self.xs[-1]


def descend_1d(
    lr: float, *, x0: float = 3.0, tol: float = 1e-4, max_steps: int = 1000, blowup: float = 1e4
) -> Run1D:
    """Full-batch gradient descent on f(x) = x² + 4x + 4 from x0."""
    x = float(x0)
    xs, grads = [x], [abs(grad_1d(x))]
    stop = "step budget"
    for _ in range(max_steps):
        if abs(grad_1d(x)) < tol:
            stop = "|f'(x)| < tol"
            break
        if abs(x) > blowup:
            stop = "diverged"
            break
        x = x - lr * grad_1d(x)
        xs.append(x)
        grads.append(abs(grad_1d(x)))
    else:
        if abs(grad_1d(x)) < tol:
            stop = "|f'(x)| < tol"
    return Run1D(lr=lr, xs=xs, grads=grads, stop=stop)


# -- 2-D: a least-squares bowl -----------------------------------------------


@dataclass(frozen=True)
class Bowl:
    """L(w) = ½·mean((X w - t)²) for X [n, 2], t [n]; minimum at w_star."""

    X: np.ndarray
    t: np.ndarray

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def w_star(self) -> np.ndarray:
        return np.linalg.solve(self.X.T @ self.X, self.X.T @ self.t)

    def loss(self, w: np.ndarray) -> float:
        r = self.X @ w - self.t
        return float(0.5 * np.mean(r * r))

    def loss_grid(self, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
        """L at every (w0[i,j], w1[i,j]); vectorised for contour plots."""
        W = np.stack([w0.ravel(), w1.ravel()])  # [2, m]
        r = self.X @ W - self.t[:, None]  # [n, m]
        return np.asarray(0.5 * np.mean(r * r, axis=0)).reshape(w0.shape)

    def grad(self, w: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        X, t = (self.X, self.t) if idx is None else (self.X[idx], self.t[idx])
        return np.asarray(X.T @ (X @ w - t) / len(t))


def make_bowl(seed: int, n: int = 200) -> Bowl:
    """Two correlated features (an elongated, tilted bowl) and a noisy target."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 2))
    mix = np.array([[1.0, 0.0], [0.7, 0.5]])  # feature 2 correlates with feature 1
    X = z @ mix.T
    w_true = np.array([1.0, -1.0])
    t = X @ w_true + 0.3 * rng.standard_normal(n)
    return Bowl(X=X, t=t)


@dataclass(frozen=True)
class Run2D:
    method: str
    batch_size: int
    lr: float
    path: np.ndarray  # [updates + 1, 2], w after every update
    epochs: np.ndarray  # [updates + 1], examples seen / n at each point of the path
    losses: np.ndarray  # [updates + 1], full-data loss at each point
    stop: str
    stop_epoch: float

    @property
    def updates(self) -> int:
        return len(self.path) - 1


def descend_2d(
    bowl: Bowl,
    *,
    method: str,
    batch_size: int,
    lr: float,
    w0: np.ndarray,
    seed: int,
    grad_tol: float = 1e-3,
    loss_tol: float = 1e-5,
    max_epochs: int = 100,
) -> Run2D:
    """Minibatch gradient descent on the bowl; batch_size == n is full-batch GD.

    Full batch stops when ‖∇L(w)‖ < grad_tol; smaller batches stop at the end
    of an epoch whose full loss improved by less than loss_tol.
    """
    rng = np.random.default_rng(seed)
    n = bowl.n
    w = np.array(w0, dtype=float)
    path, epochs, losses = [w.copy()], [0.0], [bowl.loss(w)]
    seen = 0
    full = batch_size >= n
    stop = "epoch budget"
    prev_epoch_loss = losses[0]
    for _epoch in range(max_epochs):
        if full and float(np.linalg.norm(bowl.grad(w))) < grad_tol:
            stop = "‖∇L‖ < tol"
            break
        order = np.arange(n) if full else rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            w = w - lr * bowl.grad(w, idx)
            seen += len(idx)
            path.append(w.copy())
            epochs.append(seen / n)
            losses.append(bowl.loss(w))
        if not full:
            if abs(prev_epoch_loss - losses[-1]) < loss_tol:
                stop = "|ΔL per epoch| < tol"
                break
            prev_epoch_loss = losses[-1]
    else:
        if full and float(np.linalg.norm(bowl.grad(w))) < grad_tol:
            stop = "‖∇L‖ < tol"
    return Run2D(
        method=method,
        batch_size=min(batch_size, n),
        lr=lr,
        path=np.array(path),
        epochs=np.array(epochs),
        losses=np.array(losses),
        stop=stop,
        stop_epoch=float(epochs[-1]),
    )
