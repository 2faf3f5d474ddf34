"""Data sets: shapes, dtypes, balance, determinism, stratified splits."""

from __future__ import annotations

import numpy as np
import pytest

from training import datasets


@pytest.mark.parametrize("name", datasets.DATASETS_2D)
def test_2d_shapes_dtypes_and_balance(name: str) -> None:
    X, y = datasets.make_2d(name, n_samples=301, seed=3)
    assert X.shape == (301, 2) and X.dtype == np.float32
    assert y.shape == (301,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [150, 151]
    assert np.isfinite(X).all()
    # raw features (not normalised): the sets span roughly [-5, 5]
    assert 3.0 < np.abs(X).max() < 9.0


@pytest.mark.parametrize("name", datasets.DATASETS_2D)
def test_2d_is_deterministic_for_a_seed(name: str) -> None:
    X1, y1 = datasets.make_2d(name, n_samples=200, seed=7)
    X2, y2 = datasets.make_2d(name, n_samples=200, seed=7)
    X3, _ = datasets.make_2d(name, n_samples=200, seed=8)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)


@pytest.mark.parametrize("name", ["circle", "xor", "spiral", "linear"])
def test_noise_parameter_moves_points(name: str) -> None:
    clean, _ = datasets.make_2d(name, n_samples=200, noise=0.0, seed=1)
    noisy, _ = datasets.make_2d(name, n_samples=200, noise=0.5, seed=1)
    assert not np.allclose(clean, noisy)


def test_geometry_of_the_sets() -> None:
    X, y = datasets.make_2d("circle", noise=0.0, seed=0)
    r = np.linalg.norm(X, axis=1)
    assert r[y == 1].max() <= 2.5 + 1e-5 and r[y == 0].min() >= 3.5 - 1e-5
    X, y = datasets.make_2d("xor", noise=0.0, seed=0)
    same_sign = X[:, 0] * X[:, 1] > 0
    assert (same_sign == (y == 0)).all()
    X, y = datasets.make_2d("gaussian", seed=0)
    assert X[y == 0].mean(axis=0) == pytest.approx([-2, -2], abs=0.2)
    assert X[y == 1].mean(axis=0) == pytest.approx([2, 2], abs=0.2)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="unknown 2-D data set"):
        datasets.make_2d("moons")
    with pytest.raises(ValueError, match="noise"):
        datasets.make_2d("circle", noise=-1.0)
    with pytest.raises(ValueError, match="n_samples"):
        datasets.make_2d("circle", n_samples=1)


def test_train_val_split_is_stratified_disjoint_and_complete() -> None:
    X, y = datasets.make_2d("spiral", n_samples=400, seed=0)
    X_tr, X_val, y_tr, y_val = datasets.train_val_split(X, y, val_fraction=0.25, seed=0)
    assert len(X_val) == 100 and len(X_tr) == 300
    assert np.bincount(y_val).tolist() == [50, 50]
    rows = {tuple(r) for r in np.concatenate([X_tr, X_val]).tolist()}
    assert rows == {tuple(r) for r in X.tolist()}
    again = datasets.train_val_split(X, y, val_fraction=0.25, seed=0)
    np.testing.assert_array_equal(again[1], X_val)


def test_digits_split_is_real_stratified_and_raw() -> None:
    split = datasets.load_digits(val_fraction=0.25, seed=0)
    assert split.X_train.shape[1:] == (1, 8, 8) and split.X_train.dtype == np.float32
    assert len(split.y_train) + len(split.y_val) == 1797
    assert split.classes == 10 and split.labels == tuple("0123456789")
    assert split.input_shape == (1, 8, 8)
    assert split.X_train.min() == 0.0 and split.X_train.max() == 16.0  # raw intensities
    expected = np.bincount(np.concatenate([split.y_train, split.y_val])) * 0.25
    assert np.abs(np.bincount(split.y_val) - expected).max() <= 1.0


def test_load_gives_labels_and_input_shape() -> None:
    split = datasets.load("circle", n_samples=100, seed=0)
    assert split.labels == ("outside", "inside")
    assert split.input_shape == (2,) and split.classes == 2
    assert len(split.y_val) == 25
