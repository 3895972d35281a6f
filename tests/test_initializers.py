"""Initializers: the statistics their formulas promise, seeding, and Keras's GRU defaults."""
import numpy as np
import pytest

from cgru import initializers, layers


def draw(init, shape=(400, 600), seed=0):
    return init(shape, np.random.default_rng(seed), "float64")


def test_zeros_ones_constant():
    assert not draw(initializers.Zeros()).any()
    assert (draw(initializers.Ones()) == 1).all()
    assert (draw(initializers.Constant(0.25)) == 0.25).all()


def test_glorot_uniform_bounds_and_variance():
    w = draw(initializers.GlorotUniform())
    limit = np.sqrt(6 / (400 + 600))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert w.var() == pytest.approx(2 / (400 + 600), rel=0.02)


def test_glorot_normal_variance_and_truncation():
    w = draw(initializers.GlorotNormal())
    assert w.var() == pytest.approx(2 / (400 + 600), rel=0.02)
    std = np.sqrt(2 / 1000) / 0.87962566103423978
    assert np.abs(w).max() <= 2 * std


def test_he_uniform_and_normal_variance_follow_fan_in():
    assert draw(initializers.HeUniform()).var() == pytest.approx(2 / 400, rel=0.02)
    assert draw(initializers.HeNormal()).var() == pytest.approx(2 / 400, rel=0.02)


def test_truncated_normal_stays_within_two_standard_deviations():
    w = draw(initializers.TruncatedNormal(mean=1.0, stddev=0.1))
    assert np.abs(w - 1.0).max() <= 0.2
    assert w.mean() == pytest.approx(1.0, abs=1e-3)
    # a normal truncated at 2 sigma keeps 0.8796^2 of the variance
    assert w.std() == pytest.approx(0.1 * 0.87962566103423978, rel=0.02)


def test_uniform_range():
    w = draw(initializers.RandomUniform(-0.3, 0.1))
    assert w.min() >= -0.3 and w.max() <= 0.1 and w.mean() == pytest.approx(-0.1, abs=2e-3)


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_orthogonal_has_orthonormal_rows_or_columns(shape):
    w = draw(initializers.Orthogonal(gain=2.0), shape)
    small = min(shape)
    gram = w @ w.T if shape[0] == small else w.T @ w
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-12)


def test_same_seed_same_weights_other_seed_other_weights():
    init = initializers.GlorotUniform()
    np.testing.assert_array_equal(draw(init, seed=3), draw(init, seed=3))
    assert not np.array_equal(draw(init, seed=3), draw(init, seed=4))


def test_gru_layer_defaults_are_keras_defaults():
    gru = layers.GRU(16)
    assert isinstance(gru.kernel_initializer, initializers.GlorotUniform)
    assert isinstance(gru.recurrent_initializer, initializers.Orthogonal)
    assert isinstance(gru.bias_initializer, initializers.Zeros)
    gru.build((10, 8), np.random.default_rng(0), "float64")
    kernel, recurrent, bias = gru.get_weights()
    assert kernel.shape == (8, 48) and recurrent.shape == (16, 48) and bias.shape == (2, 48)
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(16), atol=1e-12)
    assert not bias.any()


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="kernel_initializer must be one of"):
        layers.Dense(3, kernel_initializer="lecun_magic")
