"""Models: the perceptron learning algorithm, MLP, CNN, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import datasets
from training.models import (
    MLP,
    DigitsCNN,
    Exportable,
    Normalize,
    train_perceptron,
    with_normalization,
)


def test_pla_converges_on_separable_data_with_mistakes_going_to_zero() -> None:
    X, y = datasets.make_2d("linear", n_samples=400, seed=1)
    result = train_perceptron(X, y, max_epochs=100, seed=0)
    assert result.converged
    assert result.mistakes_per_epoch[-1] == 0
    assert result.mistakes_per_epoch[0] > 0
    assert all(m > 0 for m in result.mistakes_per_epoch[:-1])
    assert (result.predict(X) == y).all()


def test_pla_never_converges_on_xor() -> None:
    X, y = datasets.make_2d("xor", n_samples=200, seed=0)
    result = train_perceptron(X, y, max_epochs=15, seed=0)
    assert not result.converged
    assert result.epochs == 15
    assert min(result.mistakes_per_epoch) > 0


def test_pla_is_the_mistake_driven_update() -> None:
    # Two points, fixed order: the first is a mistake (w = 0), the update adds it.
    X = np.array([[1.0, 2.0], [-1.0, -2.0]])
    y = np.array([1, 0])
    result = train_perceptron(X, y, max_epochs=5, seed=0, lr=0.5)
    np.testing.assert_allclose(result.weight, [0.5, 1.0])
    assert result.bias == 0.5
    assert result.mistakes_per_epoch == [1, 0]


def test_pla_rejects_more_than_two_classes() -> None:
    with pytest.raises(ValueError, match="two classes"):
        train_perceptron(np.zeros((3, 2)), np.array([0, 1, 2]))


def test_perceptron_as_linear_layer_keeps_the_decision() -> None:
    X, y = datasets.make_2d("gaussian", n_samples=300, seed=2)
    result = train_perceptron(X, y, max_epochs=20, seed=0)
    layer = result.to_module()
    with torch.no_grad():
        logits = layer(torch.from_numpy(X))
    assert (logits.argmax(1).numpy() == result.predict(X)).all()
    score = X.astype(np.float64) @ result.weight + result.bias
    probs = torch.softmax(logits, 1)[:, 1].numpy()
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-score)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "gelu"])
def test_mlp_shapes_and_layers(activation: str) -> None:
    model = MLP(2, [8, 4], 3, activation)
    out = model(torch.zeros(5, 2))
    assert out.shape == (5, 3)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 8), (8, 4), (4, 3)]


def test_mlp_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="activation"):
        MLP(2, [8], 2, "swish")
    with pytest.raises(ValueError, match="sizes"):
        MLP(2, [8, 0], 2)


def test_cnn_and_flattening_mlp_take_digit_images() -> None:
    x = torch.zeros(3, 1, 8, 8)
    assert DigitsCNN(10)(x).shape == (3, 10)
    assert MLP(64, [16], 10)(x).shape == (3, 10)


def test_normalize_standardises_training_data_and_is_a_buffer() -> None:
    X, _ = datasets.make_2d("circle", n_samples=500, seed=0)
    norm = Normalize.fit(X)
    with torch.no_grad():
        z = norm(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)
    assert {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    assert list(norm.parameters()) == []
    constant = Normalize.fit(np.ones((4, 2), dtype=np.float32))
    assert constant.std.tolist() == [1.0, 1.0]


def test_exportable_returns_logits_and_probabilities() -> None:
    X, _ = datasets.make_2d("xor", n_samples=50, seed=0)
    torch.manual_seed(0)
    model = Exportable(with_normalization(MLP(2, [4], 2), X))
    logits, probs = model(torch.from_numpy(X))
    assert logits.shape == probs.shape == (50, 2)
    torch.testing.assert_close(probs.sum(1), torch.ones(50))
