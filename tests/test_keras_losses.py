"""Huber, MeanAbsolutePercentageError and LogCosh: Keras 3's definitions and reduction (Keras is
the oracle), gradients against central finite differences in float64, names, saving, and the
'mape' metric.

On the PyTorch backend Keras takes its means in float32 (keras/src/backend/torch/numpy.py casts
to result_type(x, 'float32')), so values are compared with Keras's within a relative 1e-6 even
in float64; the definitions themselves are checked exactly by hand.
"""
import math
import os

import numpy as np
import pytest

import cgru
from cgru import layers, losses, metrics

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 on PyTorch: no TensorFlow needed

# (cgru loss, name of the Keras loss class, its arguments)
CASES = [
    (losses.Huber(), "Huber", {}),
    (losses.Huber(delta=0.3), "Huber", {"delta": 0.3}),
    (losses.Huber(delta=2.5), "Huber", {"delta": 2.5}),
    (losses.MeanAbsolutePercentageError(), "MeanAbsolutePercentageError", {}),
    (losses.LogCosh(), "LogCosh", {}),
]
SHAPES = {"outputs": (6, 3), "sequences": (3, 5, 4)}


def case_id(case):
    return repr(case[0])


def pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), 2 * rng.standard_normal(shape)


def keras_value(keras, name, kwargs, y_true, y_pred):
    loss = getattr(keras.losses, name)(**kwargs)
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


# ---- values: Keras's -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_value_equals_kerass_in_float64(case, shape):
    keras = pytest.importorskip("keras")
    ours, name, kwargs = case
    y_true, y_pred = pair(shape)
    assert ours(y_true, y_pred) == pytest.approx(
        keras_value(keras, name, dict(kwargs, dtype="float64"), y_true, y_pred), rel=1e-6)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_value_equals_kerass_in_float32(case):
    keras = pytest.importorskip("keras")
    ours, name, kwargs = case
    y_true, y_pred = (a.astype(np.float32) for a in pair((8, 3), seed=1))
    assert ours(y_true, y_pred) == pytest.approx(
        keras_value(keras, name, kwargs, y_true, y_pred), rel=1e-5)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_targets_of_shape_batch_fit_outputs_of_shape_batch_by_one_as_in_keras(case):
    keras = pytest.importorskip("keras")
    ours, name, kwargs = case
    y_true, y_pred = pair((7, 1), seed=2)
    assert ours(y_true[:, 0], y_pred) == pytest.approx(
        keras_value(keras, name, dict(kwargs, dtype="float64"), y_true[:, 0], y_pred), rel=1e-6)


def test_mape_of_a_zero_target_divides_by_epsilon_as_keras():
    keras = pytest.importorskip("keras")
    y_true, y_pred = np.array([[0.0, 2.0]]), np.array([[1e-3, 1.0]])
    expected = (100 * 1e-3 / 1e-7 + 100 * 0.5) / 2
    assert losses.MeanAbsolutePercentageError()(y_true, y_pred) == pytest.approx(expected)
    assert losses.MeanAbsolutePercentageError()(y_true, y_pred) == pytest.approx(
        keras_value(keras, "MeanAbsolutePercentageError", {"dtype": "float64"}, y_true, y_pred),
        rel=1e-6)


def test_log_cosh_of_huge_errors_stays_finite_as_keras():
    keras = pytest.importorskip("keras")
    y_true, y_pred = np.zeros((1, 3)), np.array([[1e4, -1e4, 800.0]])
    value = losses.LogCosh()(y_true, y_pred)
    assert value == pytest.approx(np.mean(np.abs(y_pred)) - math.log(2))
    assert value == pytest.approx(keras_value(keras, "LogCosh", {"dtype": "float64"}, y_true,
                                              y_pred), rel=1e-6)


# ---- values: by hand (Keras's documented examples) -----------------------------------------------


def test_huber_by_hand():
    y_true, y_pred = np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([[0.6, 0.4], [0.4, 0.6]])
    assert losses.Huber()(y_true, y_pred) == pytest.approx(0.155)
    # delta 0.5: |x| = 0.6 is past it, 0.5 * (0.6 - 0.25) = 0.175; 0.4 is within, 0.08
    assert losses.Huber(delta=0.5)(y_true, y_pred) == pytest.approx((0.175 * 3 + 0.08) / 4)


def test_log_cosh_by_hand():
    y_true, y_pred = np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([[1.0, 1.0], [0.0, 0.0]])
    assert losses.LogCosh()(y_true, y_pred) == pytest.approx(math.log(math.cosh(1.0)) / 4)


def test_mape_by_hand():
    y_true, y_pred = np.array([[2.0, -4.0]]), np.array([[1.0, -5.0]])
    assert losses.MeanAbsolutePercentageError()(y_true, y_pred) == pytest.approx((50 + 25) / 2)


# ---- gradients -----------------------------------------------------------------------------------


def finite_differences(loss, y_true, y_pred, eps=1e-6):
    grad = np.zeros_like(y_pred)
    for i in np.ndindex(y_pred.shape):
        up, down = y_pred.copy(), y_pred.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (loss(y_true, up) - loss(y_true, down)) / (2 * eps)
    return grad


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradient_matches_finite_differences_in_float64(case, shape):
    loss = case[0]
    y_true, y_pred = pair(shape, seed=3)
    y_true += np.sign(y_true)  # MAPE: targets away from 0, where its scale changes fast
    grad = loss.gradient(y_true, y_pred)
    assert grad.shape == y_pred.shape and grad.dtype == np.float64
    np.testing.assert_allclose(grad, finite_differences(loss, y_true, y_pred), rtol=1e-5,
                               atol=1e-8)


def test_huber_gradient_is_the_error_clipped_at_delta():
    y_true, y_pred = np.zeros((1, 4)), np.array([[-3.0, -0.5, 0.25, 2.0]])
    np.testing.assert_allclose(losses.Huber(delta=1.0).gradient(y_true, y_pred),
                               [[-1 / 4, -0.5 / 4, 0.25 / 4, 1 / 4]])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float32_outputs_get_float32_gradients(case):
    y_true, y_pred = (a.astype(np.float32) for a in pair((4, 2)))
    assert case[0].gradient(y_true, y_pred).dtype == np.float32


# ---- names, settings and saving ------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [
    ("huber", losses.Huber), ("Huber", losses.Huber), ("huber_loss", losses.Huber),
    ("mape", losses.MeanAbsolutePercentageError), ("MAPE", losses.MeanAbsolutePercentageError),
    ("mean_absolute_percentage_error", losses.MeanAbsolutePercentageError),
    ("log_cosh", losses.LogCosh), ("logcosh", losses.LogCosh),
])
def test_losses_are_found_by_kerass_names(name, cls):
    assert type(losses.get(name)) is cls


@pytest.mark.parametrize("loss", [losses.Huber(delta=0.25), losses.MeanAbsolutePercentageError(),
                                  losses.LogCosh()], ids=repr)
def test_serialize_and_deserialize_round_trip(loss):
    spec = losses.serialize(loss)
    again = losses.deserialize(spec)
    assert type(again) is type(loss) and losses.serialize(again) == spec


@pytest.mark.parametrize("delta", [0, -1.0, float("inf"), "1", True])
def test_huber_refuses_a_delta_that_is_not_a_positive_number(delta):
    with pytest.raises(ValueError, match="Huber: delta must be a number > 0"):
        losses.Huber(delta=delta)


@pytest.mark.parametrize("loss", ["huber", losses.Huber(delta=0.5), "mape", "log_cosh"],
                         ids=repr)
def test_a_model_trains_on_each_and_keeps_it_when_saved(loss, tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4, 2)), rng.standard_normal((16, 1)) + 3
    model = cgru.Sequential([layers.GRU(4), layers.Dense(1)], seed=0)
    model.compile("adam", loss, metrics=["mape"])
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save(tmp_path / "m.npz")
    loaded = cgru.load_model(tmp_path / "m.npz")
    assert losses.serialize(loaded.loss) == losses.serialize(model.loss)
    assert loaded.evaluate(x, y) == pytest.approx(model.evaluate(x, y))


# ---- the 'mape' metric ---------------------------------------------------------------------------


def test_mape_metric_accumulates_over_batches_as_keras():
    keras = pytest.importorskip("keras")
    ours = metrics.get("mape", losses.MeanSquaredError())
    theirs = keras.metrics.MeanAbsolutePercentageError(dtype="float64")
    for seed in range(3):
        y_true, y_pred = pair((5 + seed, 2), seed=seed)
        ours.update(y_true, y_pred)
        theirs.update_state(y_true, y_pred)
    assert ours.name == "mape"
    assert ours.result() == pytest.approx(float(theirs.result()), rel=1e-6)


def test_mape_metric_equals_the_mape_loss_on_one_batch():
    y_true, y_pred = pair((6, 3))
    metric = metrics.get("mean_absolute_percentage_error", losses.MeanSquaredError())
    metric.update(y_true, y_pred)
    assert metric.result() == pytest.approx(losses.MeanAbsolutePercentageError()(y_true, y_pred))
