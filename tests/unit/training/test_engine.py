"""The training loop: determinism, optimizers, history, mini-batches."""

from __future__ import annotations

import inspect

import pytest
import torch

from training import datasets, engine
from training.config import TrainConfig
from training.models import MLP, with_normalization


@pytest.fixture(scope="module")
def gaussian() -> datasets.Split:
    return datasets.load("gaussian", n_samples=200, seed=0)


def _train(
    split: datasets.Split, seed: int = 0, **kw: object
) -> tuple[torch.nn.Module, engine.History]:
    engine.seed_everything(seed)
    model = with_normalization(MLP(2, [8, 8], 2, "tanh"), split.X_train)
    options = {"optimizer": "adam", "lr": 0.01, "epochs": 10, "seed": seed, "progress": False}
    options.update(kw)
    hist = engine.fit(model, split.X_train, split.y_train, split.X_val, split.y_val, **options)  # type: ignore[arg-type]
    return model, hist


def test_fit_is_deterministic_for_a_seed(gaussian: datasets.Split) -> None:
    m1, h1 = _train(gaussian, seed=3, batch_size=16)
    m2, h2 = _train(gaussian, seed=3, batch_size=16)
    _, h3 = _train(gaussian, seed=4, batch_size=16)
    assert h1.train_loss == h2.train_loss and h1.val_acc == h2.val_acc
    assert h1.grad_magnitude == h2.grad_magnitude
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert h1.train_loss != h3.train_loss


@pytest.mark.parametrize("optimizer", engine.OPTIMIZERS)
def test_every_optimizer_learns_two_blobs(gaussian: datasets.Split, optimizer: str) -> None:
    lr = {"sgd": 0.5, "momentum": 0.1, "rmsprop": 0.01, "adam": 0.01}[optimizer]
    _, hist = _train(gaussian, optimizer=optimizer, lr=lr, epochs=30)
    assert hist.train_loss[-1] < 0.5 * hist.train_loss[0]
    assert hist.val_acc[-1] >= 0.9


def test_history_shapes_and_layer_names(gaussian: datasets.Split) -> None:
    _, hist = _train(gaussian, epochs=7, batch_size=32)
    assert hist.epochs == 7
    assert len(hist.val_loss) == len(hist.train_acc) == len(hist.val_acc) == 7
    assert hist.layer_names == ["Linear 2→8", "Linear 8→8", "Linear 8→2"]
    assert len(hist.grad_magnitude) == 7
    assert all(len(row) == 3 and all(g > 0 for g in row) for row in hist.grad_magnitude)
    assert all(0.0 <= a <= 1.0 for a in hist.train_acc + hist.val_acc)
    assert hist.as_dict()["layer_names"] == hist.layer_names


def test_max_steps_stops_after_one_batch(gaussian: datasets.Split) -> None:
    _, hist = _train(gaussian, epochs=50, batch_size=10, max_steps=1)
    assert hist.epochs == 1


def test_label_smoothing_keeps_logits_small(gaussian: datasets.Split) -> None:
    plain, _ = _train(gaussian, epochs=100, lr=0.05)
    smooth, hist = _train(gaussian, epochs=100, lr=0.05, label_smoothing=0.1)
    x = torch.from_numpy(gaussian.X_val)
    with torch.no_grad():
        assert smooth(x).abs().max() < plain(x).abs().max()
    assert hist.val_acc[-1] >= 0.95


def test_bad_arguments(gaussian: datasets.Split) -> None:
    with pytest.raises(ValueError, match="optimizer"):
        _train(gaussian, optimizer="lbfgs")
    with pytest.raises(ValueError, match="epochs"):
        _train(gaussian, epochs=0)


def test_a_configs_fit_kwargs_are_fits_own_keywords() -> None:
    """`training.pipeline.run` passes `TrainConfig.fit_kwargs()` to `engine.fit`."""
    keywords = inspect.signature(engine.fit).parameters
    kwargs = TrainConfig("m", "circle", "mlp", lr=0.2, batch_size=16).fit_kwargs()
    assert set(kwargs) <= set(keywords)
    assert kwargs["lr"] == 0.2 and kwargs["batch_size"] == 16
